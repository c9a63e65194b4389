#include "common.h"
/* Exits with status 42 to prove that HTIF's exit value reaches the host. */
int main(void) { return 42; }
void mtrap(struct frame *f) { (void)f; exit(99); }
