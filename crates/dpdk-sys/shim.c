/* The part of the C shim that bindgen's generated static-inline wrappers do not cover. */
#include "wrapper.h"

int tsmp_rte_errno(void)
{
	return rte_errno;
}
