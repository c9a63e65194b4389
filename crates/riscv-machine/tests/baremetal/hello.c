#include "common.h"
int main(void) {
    puts_("hello from M-mode on hart ");
    putc_('0' + csrr(mhartid));
    putc_('\n');
    return 0;
}
