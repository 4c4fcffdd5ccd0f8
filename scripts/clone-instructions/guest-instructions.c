/*
 * A QEMU TCG plugin that counts the guest instructions a VM executes from its start (for
 * a clone: from the restore) until the first time it runs the instruction at `entry=ADDR`
 * (the container's program's ELF entry point), then prints the counts, split into kernel
 * and user space, through QEMU's log (`-d plugin -D FILE`):
 *
 *     berth-guest-instructions entry=0x40ebf0 total=N kernel=K user=U blocks=B
 *
 * Used by scripts/clone-instructions.sh for the hardware estimate in docs/benchmarks.md:
 * under KVM the guest runs the same instructions natively, so their number, not TCG's
 * time, is what carries over.
 *
 * Written by hand because QEMU ships no instruction counter in Debian's packages (its
 * contrib plugins are not packaged). The plugin API is C; the few declarations used are
 * written out here as QEMU's public qemu-plugin.h gives them (stable since QEMU 4.2), so
 * that no QEMU source tree is needed to build this.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qemu_plugin_vcpu_tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, qemu_plugin_vcpu_udata_cb_t,
                                          enum qemu_plugin_cb_flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, qemu_plugin_udata_cb_t, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
void qemu_plugin_outs(const char *);

/* QEMU 7.2 accepts API versions 0 and 1; this plugin uses nothing newer. */
__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* x86-64 kernel addresses are the upper half. */
#define KERNEL_START 0xffff800000000000ULL

static uint64_t entry;
static uint64_t kernel_instructions, user_instructions, blocks;
static bool reported;

static void report(const char *when)
{
    char line[256];
    uint64_t kernel = __atomic_load_n(&kernel_instructions, __ATOMIC_RELAXED);
    uint64_t user = __atomic_load_n(&user_instructions, __ATOMIC_RELAXED);
    snprintf(line, sizeof line,
             "berth-guest-instructions %s=0x%" PRIx64 " total=%" PRIu64 " kernel=%" PRIu64
             " user=%" PRIu64 " blocks=%" PRIu64 "\n",
             when, entry, kernel + user, kernel, user,
             __atomic_load_n(&blocks, __ATOMIC_RELAXED));
    qemu_plugin_outs(line);
}

/* The block's instruction count travels as its user data, tagged with the address
 * space in the lowest bit. */
static void block_executed(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    uintptr_t data = (uintptr_t)userdata;
    uint64_t *counter = (data & 1) ? &kernel_instructions : &user_instructions;
    __atomic_fetch_add(counter, data >> 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&blocks, 1, __ATOMIC_RELAXED);
}

static void entry_reached(unsigned int vcpu_index, void *userdata)
{
    block_executed(vcpu_index, userdata);
    if (!__atomic_exchange_n(&reported, true, __ATOMIC_RELAXED)) {
        report("entry");
    }
}

static void block_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    uintptr_t data = ((uintptr_t)qemu_plugin_tb_n_insns(tb) << 1) | (vaddr >= KERNEL_START);
    qemu_plugin_vcpu_udata_cb_t callback = vaddr == entry ? entry_reached : block_executed;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, callback, QEMU_PLUGIN_CB_NO_REGS, (void *)data);
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    report("exit");
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "entry=", 6) == 0) {
            entry = strtoull(argv[i] + 6, NULL, 0);
        }
    }
    if (entry == 0) {
        fprintf(stderr, "guest-instructions: give the entry point: entry=0xADDR\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
