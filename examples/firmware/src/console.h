/* Where the firmware's text goes and how it stops: stdio on the host, ARM semihosting on a board
 * (the emulator or a debug probe prints it and takes the exit status). */
#ifndef CONSOLE_H
#define CONSOLE_H

#include <stdint.h>

/* Writes a NUL-terminated string. */
void console_write(const char *text);

/* Writes `value` in decimal. */
void console_write_u32(uint32_t value);

/* Stops the program with `status` (0 = success), as the exit code of the host program or of QEMU. */
void platform_exit(int status) __attribute__((noreturn));

#endif
