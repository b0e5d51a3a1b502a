#include "console.h"

void console_write_u32(uint32_t value) {
    char digits[11];
    char *p = &digits[sizeof digits - 1];
    *p = '\0';
    do {
        *--p = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    console_write(p);
}
