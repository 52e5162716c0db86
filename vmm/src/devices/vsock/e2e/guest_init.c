// Guest /init for the vsock/rng end-to-end check (host_check.py drives the host side).
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xFFFFFFFFu
struct sockaddr_vm {
    unsigned short svm_family, svm_reserved1;
    unsigned int svm_port, svm_cid;
    unsigned char svm_flags, svm_zero[3];
};
static int log_fd = -1;
static void logs(const char *s) { if (log_fd >= 0) write(log_fd, s, strlen(s)); }

int main(void) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    log_fd = open("/dev/ttyS0", O_WRONLY);
    logs("SMOKE: init up\n");
    // 1) rng
    char rnd[16] = {0}, hex[40] = {0};
    int r = open("/dev/hwrng", O_RDONLY);
    int n = r >= 0 ? read(r, rnd, sizeof rnd) : -1;
    for (int i = 0; i < 16 && n == 16; i++) sprintf(hex + 2 * i, "%02x", (unsigned char)rnd[i]);
    // 2) guest -> host connect, port 1234
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = 1234};
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { logs("SMOKE: connect failed\n"); goto out; }
    char msg[128];
    int m = snprintf(msg, sizeof msg, "hello from guest rng=%s\n", n == 16 ? hex : "none");
    write(s, msg, m);
    char buf[65536];
    long total = 0;
    for (;;) { long k = read(s, buf, sizeof buf); if (k <= 0) break; total += k; }
    m = snprintf(msg, sizeof msg, "got %ld bytes from host\n", total);
    write(s, msg, m);
    close(s);
    logs("SMOKE: guest connect done\n");
    // 3) host -> guest: listen on 5000, echo everything back until EOF
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm la = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 5000};
    bind(l, (struct sockaddr *)&la, sizeof la);
    listen(l, 4);
    logs("SMOKE: listening\n");
    int c = accept(l, 0, 0);
    for (;;) {
        long k = read(c, buf, sizeof buf);
        if (k <= 0) break;
        long off = 0;
        while (off < k) { long w = write(c, buf + off, k - off); if (w <= 0) break; off += w; }
    }
    shutdown(c, SHUT_WR);
    close(c);
    logs("SMOKE: echo done\n");
out:
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
