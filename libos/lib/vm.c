/* Names for the frame table's types (vm.h). */
#include "vm.h"

const char *ft_type_name(unsigned type)
{
    switch (type) {
    case XOMB_FT_KERNEL: return "kernel";
    case XOMB_FT_DATA: return "data";
    case XOMB_FT_TABLE: return "table";
    case XOMB_FT_ROOT: return "root";
    case XOMB_FT_DEVICE: return "device";
    default: return "?";
    }
}
