#!/usr/bin/env python3
"""ark run --stage1=kvm of busybox `true`, end to end, split into phases; next to a hand-driven
qemu microvm boot of the same kernel and root. Not a test: it prints numbers.

Phases (host clock; guest lines are timestamped as they reach the host):
  prepare   `ark prepare` (stage0: image store, render, pod dir)
  vmm       run-prepared start -> first guest kernel line (stage1 + VMM start + early boot print)
  kernel    first kernel line -> "Run /init" (guest kernel boot)
  app       "Run /init" -> the app's marker line (guest-init, app start)
  teardown  marker -> ark exits (app exit, status report over vsock, power-off, VMM exit)
The peer boots the same vmlinux with qemu -machine microvm and an ext4 root on virtio-blk whose
static /init prints a marker and reboots (kernel-config/qemu-boot.sh): the same guest kernel work
minus ark's stage0, stage2 and app. Lines: ark's phases, then "to-marker" (start to the guest's
marker) and "total" for both.
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

def qemu_once(kernel, profile):
    """The peer: qemu microvm boots the same kernel with an ext4 root on virtio-blk and a static
    marker /init that reboots (kernel-config/qemu-boot.sh, the kernel's own boot check)."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "..", "kernel-config", "qemu-boot.sh")
    out = subprocess.run(["bash", script, "--profile", profile, "--kernel", kernel, "--root", "ext4"],
                         capture_output=True, text=True)
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    if out.returncode != 0 or "marker" not in fields:
        sys.exit(f"qemu boot failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
    marker, total = float(fields["marker"]), float(fields["exit"])
    return {"to-marker": marker, "teardown": total - marker, "total": total}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ark", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--profile", required=True, help="kernel profile (kernel-config/host-profile.sh)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ark-bench-kvm-")
    try:
        arks = [ark_once(a.ark, a.image, work) for _ in range(a.runs)]
        qemus = [qemu_once(a.kernel, a.profile) for _ in range(a.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print(f"{'phase':<10}{'ark (s)':>10}{'qemu (s)':>10}   (median of {a.runs})")
    for k in ("prepare", "vmm", "kernel", "app", "teardown", "total"):
        q = f"{med(qemus, k):10.2f}" if k in qemus[0] else f"{'-':>10}"
        print(f"{k:<10}{med(arks, k):10.2f}{q}")
    print(f"{'to-marker':<10}{med(arks, 'vmm') + med(arks, 'kernel') + med(arks, 'app'):10.2f}"
          f"{med(qemus, 'to-marker'):10.2f}")
    print(f"ratio ark/qemu end to end: {med(arks, 'total') / med(qemus, 'total'):.2f}")
    print("note: on a kvm_pvm host guest kernel code is emulated: these are not hardware boot times;"
          " the hardware-KVM target is <= 0.25 s end to end")

if __name__ == "__main__":
    main()
