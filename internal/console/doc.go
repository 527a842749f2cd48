// Package console owns orchestrate's web console (`orchestrate ui`): a small
// web UI, every asset embedded in the binary, that shows the fleet (hosts,
// containers, migrations with their phases, events and triggers, a downtime
// chart, stored snapshots) and offers drain, migrate, cordon and uncordon
// behind a confirmation.
//
// It works like `kubectl proxy`: the browser talks only to the console, and
// the console talks to one agent with the operator's credentials, an Agent
// (the CLI's cluster.Client over the unix socket, or https with the token
// derived from the cluster secret). Those credentials never leave this
// process: no page, asset or response carries them, and the page's own
// requests carry only the console's session key and CSRF token, which are
// random per console process and worth nothing to the agent.
//
// Data flow: one poller reads the agent's state every Config.Poll while at
// least one page listens, turns it into a View with the pure function
// BuildView, and pushes the View to every page over server-sent events when
// it changed (and a small tick on every poll, so a page knows it is live).
// An action is a POST that the console checks and forwards to the agent's
// own API; its result shows up through the next poll.
//
// Who may use it: the console listens on loopback unless told otherwise
// (Config.AllowRemote). Every request needs the session cookie, which the
// URL printed at start sets once (the key in it is the only way in), and a
// Host header that is an IP literal, localhost or a name in Config.Hosts
// (so a DNS-rebinding page cannot read it). Actions additionally need POST,
// a same-origin request (Sec-Fetch-Site / Origin, http.CrossOriginProtection),
// a JSON body and the CSRF token from the page. Responses forbid framing and
// carry a strict Content-Security-Policy; the page builds its DOM with
// textContent only.
package console
