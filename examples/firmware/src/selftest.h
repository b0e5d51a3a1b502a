/* The firmware's self-test: known answers for the blink logic. `make test` runs it on the host,
 * or boots the board's image in QEMU, which exits with its result. */
#ifndef SELFTEST_H
#define SELFTEST_H

/* Runs every check, printing one line per failure and a summary; returns the number that failed. */
int selftest_run(void);

#endif
