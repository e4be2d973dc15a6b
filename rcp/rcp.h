/*
 * rcp.h - the RCP listener: rstmdb's wire protocol over the engine.
 * (Owned by the RCP module; this is the surface main and the mount use.)
 */
#ifndef STM_RCP_H
#define STM_RCP_H

#include "base/err.h"
#include "engine/engine.h"
#include "src/config.h"

typedef struct rcp_server rcp_server;

/* Binds (and the metrics listener when enabled), starts the event-loop
 * thread, returns at once. The server borrows e and c until rcp_stop.
 * On failure err->msg is complete, naming the listener and its address:
 * "cannot start the RCP listener on ADDR: ..." or "cannot start the
 * metrics listener on ADDR (metrics.bind_addr): ...". */
stm_code rcp_start(eng *e, const stm_config *c, rcp_server **out, stm_err *err);
/* The address actually bound ("127.0.0.1:7401"), e.g. after port 0. */
const char *rcp_bound_addr(const rcp_server *s);
/* Stops accepting, closes every connection after its queued responses, joins. */
void rcp_stop(rcp_server *s);

#endif
