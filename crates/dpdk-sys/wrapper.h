/* Every DPDK header the appliance uses. bindgen reads this file; the generated C wrappers for
 * DPDK's static inline functions include it again, so it must stay self-contained. */
#include <rte_config.h>
#include <rte_common.h>
#include <rte_errno.h>
#include <rte_version.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_prefetch.h>
#include <rte_pause.h>
#include <rte_memory.h>
#include <rte_malloc.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ethdev.h>
#include <rte_dev.h>
#include <rte_bus.h>
#include <rte_telemetry.h>
#include <rte_pdump.h>

/* rte_errno is a per-lcore thread-local variable behind a macro; this reads it. */
int tsmp_rte_errno(void);
