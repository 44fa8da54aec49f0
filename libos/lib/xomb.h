/* Everything a program needs: include "xomb.h". */
#pragma once
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "xomb_abi.h"
#include "args.h"
#include "console.h"
#include "initrd.h"
#include "libos.h"
#include "malloc.h"
#include "mem.h"
#include "platform.h"
#include "process.h"
#include "string.h"
#include "syscall.h"
#include "upcall.h"
#include "vm.h"
