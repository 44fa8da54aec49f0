/* Reading the boot archive (initrd.h).  Everything is bounds-checked
 * against the archive size we were told, since a malformed archive must not
 * make us read past its last page. */
#include "initrd.h"
#include "libos.h"
#include "string.h"
#include "vm.h"

struct header {
    uint64_t magic;
    uint64_t count;
};

static const struct header *archive(void)
{
    if (libos_initrd_size < sizeof(struct header) || !vm_mapped(XOMB_INITRD_VA))
        return 0;
    const struct header *h = (const struct header *)XOMB_INITRD_VA;
    if (h->magic != XOMB_INITRD_MAGIC)
        return 0;
    if (h->count > (libos_initrd_size - sizeof(*h)) / sizeof(struct initrd_entry))
        return 0;
    return h;
}

int initrd_count(void)
{
    const struct header *h = archive();
    return h ? (int)h->count : 0;
}

const struct initrd_entry *initrd_entry_at(int i)
{
    const struct header *h = archive();
    if (!h || i < 0 || (uint64_t)i >= h->count)
        return 0;
    const struct initrd_entry *e = (const struct initrd_entry *)(h + 1) + i;
    if (e->offset > libos_initrd_size || e->size > libos_initrd_size - e->offset)
        return 0;
    return e;
}

int initrd_find(const char *name, const void **data, uint64_t *size)
{
    for (int i = 0; i < initrd_count(); i++) {
        const struct initrd_entry *e = initrd_entry_at(i);
        if (e && strnlen(e->name, XOMB_INITRD_NAME) < XOMB_INITRD_NAME
            && strcmp(e->name, name) == 0) {
            *data = (const void *)(XOMB_INITRD_VA + e->offset);
            *size = e->size;
            return 0;
        }
    }
    return -1;
}
