/* spin: a process that never yields.  The kernel still takes the CPU away
 * from it at every tick and gives it to spin's parent (PREEMPT): the shell
 * answers Ctrl-C by destroying it. */
#include "xomb.h"

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("spin: spinning forever (Ctrl-C stops me)\n");
    console_flush();
    volatile uint64_t n = 0;
    for (;;)
        n++;
}
