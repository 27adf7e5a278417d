/* buf.h — bounded buffers shared by every provider and the agent.
 *
 * SBX_LOG_TAIL_MAX is one contract between the worker, the agent and the
 * runs table (migrations/0001_runs.sql keeps at most this many bytes of a
 * build's output): every provider keeps the last SBX_LOG_TAIL_MAX bytes.
 */
#ifndef SBX_BUF_H
#define SBX_BUF_H

#define SBX_LOG_TAIL_MAX 8192

#endif
