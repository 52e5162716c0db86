#!/usr/bin/env python3
"""ark run --stage1=kvm of busybox `true`, end to end, split into phases; next to a hand-driven
qemu microvm boot of the same kernel and root. Not a test: it prints numbers.

Phases (host clock; guest lines are timestamped as they reach the host):
  prepare   `ark prepare` (stage0: image store, render, pod dir)
  vmm       run-prepared start -> first guest kernel line (stage1 + VMM start + early boot print)
  kernel    first kernel line -> "Run /init" (guest kernel boot)
  app       "Run /init" -> the app's marker line (guest-init, app start)
  teardown  marker -> ark exits (app exit, status report over vsock, power-off, VMM exit)
The peer boots the same vmlinux with qemu -machine microvm and a busybox ext4 root whose /init
prints the marker and reboots: the same guest work minus ark's stage2.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

MARK = "ark-bench-marker"

def run_timed(cmd, env=None, markers=()):
    """Runs cmd, returns (total seconds, {marker: seconds since start}) for the first line containing each marker."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    seen = {}
    for raw in p.stdout:
        line = raw.decode(errors="replace")
        now = time.monotonic() - t0
        for m in markers:
            if m not in seen and m in line:
                seen[m] = now
    p.wait()
    return time.monotonic() - t0, seen, p.returncode

def ark_once(ark, image, workdir):
    d = tempfile.mkdtemp(prefix="ark-bench-", dir=workdir)
    base = [ark, "--dir", d, "--insecure-options=image"]
    t0 = time.monotonic()
    uuid = subprocess.check_output(base + ["prepare", "--stage1=kvm", image, "--", "sh", "-c", f"echo {MARK}"]).decode().strip()
    prepare = time.monotonic() - t0
    total, seen, rc = run_timed(base + ["--debug", "run-prepared", uuid], markers=("Linux version", "Run /init", MARK))
    subprocess.run(base + ["gc", "--grace-period=0s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(d, ignore_errors=True)
    if rc != 0 or len(seen) < 3:
        sys.exit(f"ark run failed (exit {rc}, saw {sorted(seen)})")
    return {
        "prepare": prepare,
        "vmm": seen["Linux version"],
        "kernel": seen["Run /init"] - seen["Linux version"],
        "app": seen[MARK] - seen["Run /init"],
        "teardown": total - seen[MARK],
        "total": prepare + total,
    }

def qemu_root(workdir):
    root = os.path.join(workdir, "qemu-root")
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    for d in ("proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for a in ("sh", "echo", "reboot", "true"):
        if not os.path.exists(os.path.join(root, "bin", a)):
            os.symlink("busybox", os.path.join(root, "bin", a))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(f"#!/bin/sh\n/bin/true\necho {MARK}\nreboot -f\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    img = os.path.join(workdir, "qemu-root.ext4")
    subprocess.check_call(["mkfs.ext4", "-q", "-F", "-d", root, img, "32M"])
    return img

def qemu_once(kernel, cmdline, img):
    cmd = ["qemu-system-x86_64", "-machine", "microvm", "-enable-kvm", "-cpu", "host", "-m", "128",
           "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
           "-kernel", kernel, "-append", f"{cmdline} root=/dev/vda rw rootfstype=ext4 init=/init",
           "-drive", f"id=root,file={img},format=raw,if=none", "-device", "virtio-blk-device,drive=root"]
    total, seen, rc = run_timed(cmd, markers=("Linux version", "Run /init", MARK))
    if len(seen) < 3:
        sys.exit(f"qemu boot failed (exit {rc}, saw {sorted(seen)})")
    return {"vmm": seen["Linux version"], "kernel": seen["Run /init"] - seen["Linux version"],
            "app": seen[MARK] - seen["Run /init"], "teardown": total - seen[MARK], "total": total}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ark", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--cmdline", required=True, help="the profile's flags (kernel-config/*.cmdline)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ark-bench-kvm-")
    try:
        img = qemu_root(work)
        arks = [ark_once(a.ark, a.image, work) for _ in range(a.runs)]
        qemus = [qemu_once(a.kernel, a.cmdline.replace("quiet", ""), img) for _ in range(a.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print(f"{'phase':<10}{'ark (s)':>10}{'qemu (s)':>10}   (median of {a.runs})")
    for k in ("prepare", "vmm", "kernel", "app", "teardown", "total"):
        q = f"{med(qemus, k):10.2f}" if k in qemus[0] else f"{'-':>10}"
        print(f"{k:<10}{med(arks, k):10.2f}{q}")
    print(f"ratio ark/qemu end to end: {med(arks, 'total') / med(qemus, 'total'):.2f}")
    print("note: on a kvm_pvm host guest kernel code is emulated: these are not hardware boot times;"
          " the hardware-KVM target is <= 0.25 s end to end")

if __name__ == "__main__":
    main()
