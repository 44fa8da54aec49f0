/* xsh: the shell.
 *
 *   xsh             interactive: prompt "xsh$ ", one command per line
 *   xsh -c "cmd"    run one command, exit with its status
 *
 * A command is a builtin (help, echo, exit [n], as, programs) or a program
 * from the boot archive, run as a child address space: spawn, wait,
 * "[exit N]" if it failed.  Words are split at blanks; '...' and "..."
 * group words, and a backslash escapes the next character.
 */
#include "xomb.h"
#include "nic.h"

#define MAXARGS 32
#define LINE 512

/* Split line in place into argv; returns argc, or -1 on an open quote. */
static int split(char *line, char **argv)
{
    int argc = 0;
    char *r = line, *w = line;
    while (*r) {
        while (isspace(*r))
            r++;
        if (!*r)
            break;
        if (argc == MAXARGS)
            return -2;
        argv[argc++] = w;
        char quote = 0;
        while (*r && (quote || !isspace(*r))) {
            if (!quote && (*r == '\'' || *r == '"')) {
                quote = *r++;
            } else if (quote && *r == quote) {
                quote = 0;
                r++;
            } else if (*r == '\\' && r[1] && quote != '\'') {
                r++;
                *w++ = *r++;
            } else {
                *w++ = *r++;
            }
        }
        if (quote)
            return -1;
        if (*r)
            r++;
        *w++ = 0;
    }
    argv[argc] = 0;
    return argc;
}

static void help(void)
{
    puts("builtins:\n"
         "  help            this text\n"
         "  echo WORDS      print the words\n"
         "  exit [N]        leave the shell with status N\n"
         "  as              address spaces: our handles and what we hold\n"
         "  programs        the programs in the boot archive\n"
         "  ls [PATH]       list a directory of the disk's file system\n"
         "  cat FILE...     print files (each mapped as a memory region)\n"
         "  rm PATH...      remove files or empty directories\n"
         "  mkdir DIR...    make directories\n"
         "  write FILE W..  write the words as a line into FILE;  df: the disk\n"
         "  CMD ... > FILE  write the output of a builtin or a program into FILE\n"
         "anything else runs a program from the boot archive with its arguments.");
}

static void programs(void)
{
    for (int i = 0; i < initrd_count(); i++) {
        const struct initrd_entry *e = initrd_entry_at(i);
        if (e)
            printf("  %-16.31s %8lu bytes\n", e->name, e->size);
    }
}

/* Print our mapped pages as runs of equal rights. */
static void print_runs(void)
{
    uint64_t run_start = 0, run_rights = 0, run_n = 0, prev = 0;
    uint64_t va = 0;
    while (va < USER_LIMIT) {
        int depth = vm_table_depth(va);
        uint64_t e = 0, step = PAGE_SIZE;
        if (depth < 3)
            step = depth == 0 ? (1UL << 39) : depth == 1 ? (1UL << 30) : (1UL << 21);
        else
            e = vm_pte(va);
        uint64_t rights = e ? (1 | pte_rights(e)) : 0;
        if (run_n && (!e || rights != run_rights || va != prev + PAGE_SIZE)) {
            printf("    0x%010lx-0x%010lx %c%c%c %6lu pages\n", run_start,
                   run_start + run_n * PAGE_SIZE, 'r', (run_rights & XOMB_MAP_W) ? 'w' : '-',
                   (run_rights & XOMB_MAP_X) ? 'x' : '-', run_n);
            run_n = 0;
        }
        if (e) {
            if (!run_n) {
                run_start = va;
                run_rights = rights;
            }
            run_n++;
            prev = va;
        }
        va = (va & ~(step - 1)) + step;
    }
}

static void as_list(void)
{
    uint64_t self = vm_self_root();
    printf("self    root 0x%lx: holds %u pages (data + tables), %lu spare in the pool\n",
           self, ft_count(self >> 12), pool_free_pages());
    print_runs();
    for (unsigned h = 1; h < XOMB_MAX_HANDLES; h++) {
        uint64_t r = vm_handle_root(h);
        if (!r)
            continue;
        uint64_t pfn = r >> 12;
        const char *name = h == 1 ? "parent" : proc_name(h);
        printf("handle %-3u root 0x%lx: %s, %s frame, holds %u pages\n", h, r,
               name ? name : "child", ft_type_name(ft_type(pfn)), ft_count(pfn));
    }
}

static int run(int argc, char **argv)
{
    if (argc == 0)
        return 0;
    const char *cmd = argv[0];
    if (!strcmp(cmd, "help")) {
        help();
        return 0;
    }
    if (!strcmp(cmd, "echo")) {
        for (int i = 1; i < argc; i++)
            printf("%s%s", i > 1 ? " " : "", argv[i]);
        putchar('\n');
        return 0;
    }
    if (!strcmp(cmd, "exit"))
        exit(argc > 1 ? atoi(argv[1]) : 0);
    if (!strcmp(cmd, "as")) {
        as_list();
        return 0;
    }
    if (!strcmp(cmd, "programs")) {
        programs();
        return 0;
    }
    int fst;
    if (fsh_builtin(argc, argv, &fst))
        return fst;
    const void *data;
    uint64_t size;
    if (initrd_find(cmd, &data, &size) < 0) {
        printf("xsh: %s: command not found\n", cmd);
        return 127;
    }
    long h = spawn(cmd, argv);
    if (h < 0) {
        printf("xsh: cannot run %s\n", spawn_error());
        return 126;
    }
    int vf = fsh_lend_vf(h);            /* a spare disk VF of its own, if we have one */
    nic_grant_all(h);                   /* every NIC VF we hold: nic_open(&n, i) there */
    fsh_capture_child(h);               /* `> FILE`: its output into the file */
    int status = wait_status(h, 0, 0);
    fsh_capture_child_end(h);
    fsh_take_back_vf(h, vf);
    nic_take_back(h);
    proc_destroy(h);
    if (status != 0)
        printf("[exit %d]\n", status);
    return status;
}

static int run_line(char *line)
{
    char *argv[MAXARGS + 1];
    int argc = split(line, argv);
    if (argc == -1) {
        puts("xsh: unterminated quote");
        return 2;
    }
    if (argc < 0) {
        printf("xsh: too many words (at most %d)\n", MAXARGS);
        return 2;
    }
    for (int i = 0; i < argc; i++) {    /* CMD ... > FILE */
        const char *path = !strcmp(argv[i], ">") ? argv[i + 1] :
                           argv[i][0] == '>' ? argv[i] + 1 : 0;
        if (!path && !strcmp(argv[i], ">"))
            path = "";
        if (path) {
            if (!*path || i + 2 < argc - (argv[i][1] != 0)) {
                puts("xsh: > needs exactly one file name, at the end");
                return 2;
            }
            argv[i] = 0;
            fsh_capture_begin();
            int st = run(i, argv);
            return fsh_capture_end(path) ? 1 : st;
        }
    }
    return run(argc, argv);
}

int main(int argc, char **argv)
{
    static char line[LINE];
    /* Ctrl-C while a program runs: at the next tick the kernel hands us the
     * CPU (PREEMPT) and we destroy the program, even one that never yields. */
    process_interrupt_check = console_take_interrupt;
    fsh_init(argc >= 2);
    if (argc >= 2 && !strcmp(argv[1], "-c")) {
        if (argc < 3) {
            puts("xsh: -c needs a command");
            return 2;
        }
        strncpy(line, argv[2], sizeof(line) - 1);
        return run_line(line);
    }
    for (;;) {
        printf("xsh$ ");
        if (readline(line, sizeof(line)) < 0) {
            putchar('\n');
            return 0;
        }
        run_line(line);
    }
}
