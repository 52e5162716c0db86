#!/usr/bin/env python3
# End-to-end check of ark-vmm's virtio-vsock and virtio-rng against a real Linux guest driver.
# Usage: host_check.py VMLINUX ARK_VMM INITRD.cpio   (see README.md)
import os, socket, subprocess, sys, tempfile, threading, time
K, VMM, INITRD = sys.argv[1:4]
d = tempfile.mkdtemp(prefix='ark-vsock-e2e.')
uds = d + '/v.sock'
l = socket.socket(socket.AF_UNIX); l.bind(uds + '_1234'); l.listen(4); l.settimeout(240)
args = "console=ttyS0 noxsave clearcpuid=308,288,145,298,158,306,151,297,580,141,534 nopti mitigations=off nokaslr rodata=off tsc=reliable no_timer_check no_int3_selftest rdinit=/init panic=-1"
log = open(d + '/serial.log', 'w')
t0 = time.time()
vmm = subprocess.Popen([VMM, '--kernel', K, '--initrd', INITRD, '--cmdline', args, '--memory', '128', '--vsock', '3,' + uds, '--serial', 'stdout'], stdout=log, stderr=subprocess.STDOUT)
c, _ = l.accept(); c.settimeout(120)
print('guest connected after %.1fs' % (time.time() - t0))
f = c.makefile('rb')
hello = f.readline()
print('guest says:', hello)
assert hello.startswith(b'hello from guest rng=') and b'none' not in hello, hello
blob = os.urandom(1 << 20)
c.sendall(blob); c.shutdown(socket.SHUT_WR)
got = f.readline()
print('guest says:', got)
assert got == b'got %d bytes from host\n' % len(blob), got
c.close()
# host -> guest; retry until the guest listens
for attempt in range(60):
    s = socket.socket(socket.AF_UNIX); s.connect(uds); s.settimeout(120)
    s.sendall(b'CONNECT 5000\n')
    fs = s.makefile('rb')
    line = fs.readline()
    if line.startswith(b'OK '):
        print('host connect:', line, 'attempt', attempt); break
    s.close(); time.sleep(1)
else:
    sys.exit('guest never accepted')
data = os.urandom(300000)
def w():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
th = threading.Thread(target=w); th.start()
echo = fs.read()
th.join()
assert echo == data, 'echo mismatch: %d of %d bytes' % (len(echo), len(data))
print('echo ok (%d bytes), total %.1fs' % (len(echo), time.time() - t0))
# The guest powers off; stop the VMM if it is still around.
try:
    vmm.wait(timeout=30)
except subprocess.TimeoutExpired:
    vmm.terminate()
    vmm.wait()
print('serial log:', d + '/serial.log')
