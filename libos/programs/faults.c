/* hello: the smallest program.  Prints its name and arguments.
 *   hello [--status N] [args...]   exits with N (default 0). */
#include "xomb.h"

int main(int argc, char **argv)
{
    int status = 0;
    printf("Hello from %s!\n", argc > 0 ? argv[0] : "?");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--status") == 0 && i + 1 < argc) {
            status = atoi(argv[++i]);
            continue;
        }
        printf("  argv[%d] = \"%s\"\n", i, argv[i]);
    }
    return status;
}
