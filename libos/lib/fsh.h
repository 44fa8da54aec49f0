/* The shell's file commands and its disk (fsh.c): ls, cat, rm, mkdir, write,
 * `> FILE` redirection, and lending spare disk VFs to the programs it runs. */
#pragma once
#include <stdint.h>
#include "disk.h"

extern struct disk fsh_disk;
/* Open our VF (if we hold one) and mount its file system; quiet = no messages. */
int fsh_init(int quiet);
/* Run argv if it is a file command: 1 (status in *status), else 0. */
int fsh_builtin(int argc, char **argv, int *status);
/* Redirection: capture console output from now on ... */
void fsh_capture_begin(void);
/* ... and write it to path (returns 0 or prints the error and returns 1). */
int fsh_capture_end(const char *path);
/* While capturing: give child h a private console out ring drained into the
 * capture (at each tick and at the end).  1 if done. */
int fsh_capture_child(long h);
void fsh_capture_child_end(long h);
/* Lend a spare VF to child h at DISK_VF_VA: the spare index, or -1. */
int fsh_lend_vf(long h);
void fsh_take_back_vf(long h, int spare);
