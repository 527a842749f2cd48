// Package cluster owns membership, leadership and the replicated state of an
// orchestrate cluster, and the agent API that exposes them.
//
// Data flows like this:
//
//   - Gossip (hashicorp/memberlist, encrypted with a key derived from the
//     cluster secret) tells every agent who is alive. Each agent gossips a
//     compact nodeMeta (under memberlist's 512-byte limit): its raft, API and
//     transfer addresses, engine, CRIU and kernel versions, capacity and use,
//     labels (dropped when they do not fit; /v1/self serves them all), and
//     the public halves of its SSH host and client keys.
//   - Raft (hashicorp/raft, raft-boltdb under node.data_dir/raft, TLS between
//     agents) keeps one leader. Agents bootstrap once bootstrap_expect of
//     them gossip; after that the leader adds members found by gossip as
//     voters (up to MaxVoters) or non-voters, promotes non-voters when a
//     voter goes, and removes members that stayed dead (or left) for
//     DeadRemoveAfter.
//   - The FSM (fsm.go) stores hosts, migration records, locks, an event
//     log, and every host's container report (inventory.go), which `ps` and
//     the planners read instead of asking every host. Writers stamp times
//     and IDs before Apply; Apply dispatches on a type byte to applyX. Any
//     agent accepts a write and forwards it to the leader over the
//     authenticated API. The leader prunes finished records and events to
//     the retention (retention.go), so snapshots stay bounded.
//   - The API (api.go) serves HTTP+JSON on a unix socket (local CLI, mode
//     0600) and on TCP with TLS, authenticated by a bearer token derived from
//     the secret (see secret.go for the scheme). Other packages add routes
//     with Cluster.Handle.
//
// Leader-only work runs per term: on gaining leadership the agent calls
// Barrier, then runs the reconciler and Config.LeaderLoop under a context that
// is cancelled when leadership is lost.
package cluster
