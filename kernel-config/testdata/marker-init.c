/*
 * A static /init for boot checks of ark guest kernels (kernel-config/qemu-boot.sh and
 * bench/kvm-boot-peer.sh): prints ARK-INIT-OK on the console, then ends the VM the way ark's
 * guests do, with reboot(RB_AUTOBOOT) -- which, with reboot=k, pulses the i8042 reset line.
 * Kept tiny: on kvm_pvm hosts every guest kernel instruction is emulated.
 * Build: musl-gcc -static -Os -o init marker-init.c
 */
#include <fcntl.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void)
{
	static const char marker[] = "ARK-INIT-OK\n";
	int fd = open("/dev/console", O_WRONLY);

	if (fd < 0)
		fd = 1;
	write(fd, marker, sizeof(marker) - 1);
	reboot(RB_AUTOBOOT);
	/* Only reached if the reboot failed: say so, and leave qemu's timeout to end the run. */
	write(fd, "ARK-INIT-REBOOT-FAILED\n", 23);
	for (;;)
		pause();
}
