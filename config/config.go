// Package config owns the agent's configuration file format: the keys, their
// defaults, and the precedence flags > ORCHESTRATE_* environment > YAML file
// > defaults. It validates everything up front (unknown keys, durations,
// addresses) and turns the result into each package's own plain Config
// (cluster.Config, ...). Only this package and cmd import viper.
//
// Every key "a.b_c" is also the environment variable ORCHESTRATE_A_B_C and
// the agent flag --a-b-c. Lists in the environment are comma-separated
// ("10.99.0.2:7946,10.99.0.3:7946"); maps are "k=v,k2=v2".
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
	"github.com/edgemigrate/orchestrate/policy/spot"
)

// ErrInvalid wraps every configuration error; cmd exits 2 on it.
var ErrInvalid = errors.New("invalid configuration")

// EnvPrefix prefixes every key's environment variable.
const EnvPrefix = "ORCHESTRATE"

// Config is the whole agent configuration.
type Config struct {
	Node struct {
		Name    string
		DataDir string
		Labels  map[string]string
	}
	Cluster struct {
		Bind                 string
		RaftBind             string
		Join                 []string
		BootstrapExpect      int
		SecretFile           string
		MaxVoters            int
		DeadRemoveAfter      time.Duration
		ProbeInterval        time.Duration
		ProbeTimeout         time.Duration
		SuspicionMult        int
		RaftHeartbeatTimeout time.Duration
		RaftElectionTimeout  time.Duration
		StatsInterval        time.Duration
		Retention            struct {
			Migrations       int
			MigrationsMaxAge time.Duration
			Events           int
			EventsMaxAge     time.Duration
		}
	}
	API struct {
		Bind   string
		Socket string
	}
	Engine struct {
		Type   string
		Socket string
	}
	Transfer struct {
		Bind         string
		StallTimeout time.Duration
		MaxFileBytes int
		MinFreeBytes int
		PageLinks    bool
	}
	Restore struct {
		AllowPrivileged     bool
		AllowedBindPaths    []string
		AllowedDevices      []string
		AllowedCapabilities []string
	}
	Log struct {
		Level  string
		Format string
	}
	Policy struct {
		Spot struct {
			Provider     string
			Endpoint     string
			PollInterval time.Duration
		}
		Reboot struct {
			Enabled         bool
			SentinelFile    string
			SentinelCommand string
			Command         string
			Concurrency     int
			Window          string
			CheckInterval   time.Duration
			Mode            string
			Return          bool
			Timeout         time.Duration
		}
		Rebalance struct {
			Schedule  string
			Threshold float64
			MaxMoves  int
		}
		Forensics struct {
			BeforeEvacuation         bool
			BeforeEvacuationShare    float64
			BeforeEvacuationParallel int
		}
	}
	Forensics struct {
		StoreHost              string
		ImageRegistry          string
		ImageRegistryTLSVerify bool
		Retention              struct {
			Count  int
			MaxAge time.Duration
		}
	}
}

type kind int

const (
	kString kind = iota
	kAddr        // host:port
	kInt
	kDuration
	kList
	kMap
	kBool
	kFloat
)

type key struct {
	name  string
	kind  kind
	def   any
	usage string
	set   func(c *Config, v any)
}

// keys is the complete list of configuration keys. Defaults come from
// cluster.DefaultConfig where the cluster owns them.
var keys = func() []key {
	d := cluster.DefaultConfig()
	return []key{
		{"node.name", kString, d.NodeName, "node name (default: hostname)", func(c *Config, v any) { c.Node.Name = v.(string) }},
		{"node.data_dir", kString, d.DataDir, "directory for raft data and SSH keys", func(c *Config, v any) { c.Node.DataDir = v.(string) }},
		{"node.labels", kMap, map[string]string{}, "node labels, k=v", func(c *Config, v any) { c.Node.Labels = v.(map[string]string) }},
		{"cluster.bind", kAddr, d.BindAddr, "gossip (memberlist) address host:port", func(c *Config, v any) { c.Cluster.Bind = v.(string) }},
		{"cluster.raft_bind", kAddr, "", "raft address host:port (default: cluster.bind's host, port 7947)", func(c *Config, v any) { c.Cluster.RaftBind = v.(string) }},
		{"cluster.join", kList, []string{}, "seed gossip addresses", func(c *Config, v any) { c.Cluster.Join = v.([]string) }},
		{"cluster.bootstrap_expect", kInt, d.BootstrapExpect, "agents that bootstrap raft together", func(c *Config, v any) { c.Cluster.BootstrapExpect = v.(int) }},
		{"cluster.secret_file", kString, "", "cluster secret file (orchestrate keygen)", func(c *Config, v any) { c.Cluster.SecretFile = v.(string) }},
		{"cluster.max_voters", kInt, d.MaxVoters, "raft voters; later members are non-voters", func(c *Config, v any) { c.Cluster.MaxVoters = v.(int) }},
		{"cluster.dead_remove_after", kDuration, d.DeadRemoveAfter, "remove members dead this long", func(c *Config, v any) { c.Cluster.DeadRemoveAfter = v.(time.Duration) }},
		{"cluster.probe_interval", kDuration, d.ProbeInterval, "gossip failure-detection probe interval", func(c *Config, v any) { c.Cluster.ProbeInterval = v.(time.Duration) }},
		{"cluster.probe_timeout", kDuration, d.ProbeTimeout, "gossip probe timeout", func(c *Config, v any) { c.Cluster.ProbeTimeout = v.(time.Duration) }},
		{"cluster.suspicion_mult", kInt, d.SuspicionMult, "probe intervals a suspect has to refute", func(c *Config, v any) { c.Cluster.SuspicionMult = v.(int) }},
		{"cluster.raft_heartbeat_timeout", kDuration, d.RaftHeartbeatTimeout, "raft heartbeat timeout", func(c *Config, v any) { c.Cluster.RaftHeartbeatTimeout = v.(time.Duration) }},
		{"cluster.raft_election_timeout", kDuration, d.RaftElectionTimeout, "raft election timeout", func(c *Config, v any) { c.Cluster.RaftElectionTimeout = v.(time.Duration) }},
		{"cluster.stats_interval", kDuration, d.StatsInterval, "refresh of gossiped capacity and container count", func(c *Config, v any) { c.Cluster.StatsInterval = v.(time.Duration) }},
		{"cluster.retention.migrations", kInt, d.Retention.Migrations, "finished migration records kept (the newest)", func(c *Config, v any) { c.Cluster.Retention.Migrations = v.(int) }},
		{"cluster.retention.migrations_max_age", kDuration, d.Retention.MigrationsMaxAge, "finished migration records older than this are dropped", func(c *Config, v any) { c.Cluster.Retention.MigrationsMaxAge = v.(time.Duration) }},
		{"cluster.retention.events", kInt, d.Retention.Events, "events kept (the newest)", func(c *Config, v any) { c.Cluster.Retention.Events = v.(int) }},
		{"cluster.retention.events_max_age", kDuration, d.Retention.EventsMaxAge, "events older than this are dropped", func(c *Config, v any) { c.Cluster.Retention.EventsMaxAge = v.(time.Duration) }},
		{"api.bind", kAddr, "", "TLS API address host:port (default: cluster.bind's host, port 7948)", func(c *Config, v any) { c.API.Bind = v.(string) }},
		{"api.socket", kString, d.APISocket, "unix socket for the local CLI", func(c *Config, v any) { c.API.Socket = v.(string) }},
		{"engine.type", kString, "podman", "container engine: podman, docker, or none (a witness: gossip and raft only)", func(c *Config, v any) { c.Engine.Type = v.(string) }},
		{"engine.socket", kString, "unix:///run/podman/podman.sock", "engine service URI", func(c *Config, v any) { c.Engine.Socket = v.(string) }},
		{"transfer.bind", kAddr, "", "checkpoint transfer (SSH) address (default: cluster.bind's host, port 7922)", func(c *Config, v any) { c.Transfer.Bind = v.(string) }},
		{"transfer.stall_timeout", kDuration, time.Minute, "a stream with no byte for this long fails, releasing what it held", func(c *Config, v any) { c.Transfer.StallTimeout = v.(time.Duration) }},
		{"transfer.max_file_bytes", kInt, 64 << 30, "largest file a peer may store here: an upload, a snapshot, a pre-copy base (0: no limit)", func(c *Config, v any) { c.Transfer.MaxFileBytes = v.(int) }},
		{"transfer.min_free_bytes", kInt, 1 << 30, "free space uploads must leave on the spool's file system", func(c *Config, v any) { c.Transfer.MinFreeBytes = v.(int) }},
		{"transfer.page_links", kBool, true, "carry a migration's memory pages on a TCP link of their own (a port the target opens for that one migration on the transfer address, only the source may connect, sealed with a key sent over SSH) instead of inside SSH", func(c *Config, v any) { c.Transfer.PageLinks = v.(bool) }},
		{"restore.allow_privileged", kBool, false, "restore privileged containers, ones that share host namespaces or run unconfined", func(c *Config, v any) { c.Restore.AllowPrivileged = v.(bool) }},
		{"restore.allowed_bind_paths", kList, []string{}, "host paths a restored container may bind-mount (each path and what lies under it)", func(c *Config, v any) { c.Restore.AllowedBindPaths = v.([]string) }},
		{"restore.allowed_devices", kList, []string{}, "host devices a restored container may be given", func(c *Config, v any) { c.Restore.AllowedDevices = v.([]string) }},
		{"restore.allowed_capabilities", kList, []string{}, "capabilities a restored container may have beyond the default set (ALL: any)", func(c *Config, v any) { c.Restore.AllowedCapabilities = v.([]string) }},
		{"log.level", kString, "info", "debug, info, warn or error", func(c *Config, v any) { c.Log.Level = v.(string) }},
		{"log.format", kString, "text", "text or json", func(c *Config, v any) { c.Log.Format = v.(string) }},
		{"policy.spot.provider", kString, "none", "spot/maintenance notices: auto, aws, gcp, azure or none", func(c *Config, v any) { c.Policy.Spot.Provider = v.(string) }},
		{"policy.spot.endpoint", kString, "", "metadata service base URL (default: the provider's)", func(c *Config, v any) { c.Policy.Spot.Endpoint = v.(string) }},
		{"policy.spot.poll_interval", kDuration, 2 * time.Second, "metadata poll interval (10ms-2s)", func(c *Config, v any) { c.Policy.Spot.PollInterval = v.(time.Duration) }},
		{"policy.reboot.enabled", kBool, false, "drain and reboot when a reboot is pending", func(c *Config, v any) { c.Policy.Reboot.Enabled = v.(bool) }},
		{"policy.reboot.sentinel_file", kString, "/var/run/reboot-required", "a reboot is pending while this file exists", func(c *Config, v any) { c.Policy.Reboot.SentinelFile = v.(string) }},
		{"policy.reboot.sentinel_command", kString, "", "command whose exit 0 means a reboot is pending", func(c *Config, v any) { c.Policy.Reboot.SentinelCommand = v.(string) }},
		{"policy.reboot.command", kString, "systemctl reboot", "command that reboots the host", func(c *Config, v any) { c.Policy.Reboot.Command = v.(string) }},
		{"policy.reboot.concurrency", kInt, 1, "hosts that may reboot at once", func(c *Config, v any) { c.Policy.Reboot.Concurrency = v.(int) }},
		{"policy.reboot.window", kString, "", "when reboots may start, e.g. \"Mon-Fri 02:00-05:00 Europe/Berlin\"", func(c *Config, v any) { c.Policy.Reboot.Window = v.(string) }},
		{"policy.reboot.check_interval", kDuration, time.Minute, "how often to check for a pending reboot", func(c *Config, v any) { c.Policy.Reboot.CheckInterval = v.(time.Duration) }},
		{"policy.reboot.mode", kString, "drain", "drain, local (checkpoint to this host's disk and restore after the boot) or auto", func(c *Config, v any) { c.Policy.Reboot.Mode = v.(string) }},
		{"policy.reboot.return", kBool, false, "after a drain and reboot, live-migrate the containers that left back", func(c *Config, v any) { c.Policy.Reboot.Return = v.(bool) }},
		{"policy.reboot.timeout", kDuration, 10 * time.Minute, "how long the host may take to go down after the reboot command", func(c *Config, v any) { c.Policy.Reboot.Timeout = v.(time.Duration) }},
		{"policy.rebalance.schedule", kString, "", "cron schedule of rebalancing (empty: off)", func(c *Config, v any) { c.Policy.Rebalance.Schedule = v.(string) }},
		{"policy.rebalance.threshold", kFloat, 0.2, "memory spread (max-min used/capacity) that triggers moves", func(c *Config, v any) { c.Policy.Rebalance.Threshold = v.(float64) }},
		{"policy.rebalance.max_moves", kInt, 3, "moves per rebalance at most", func(c *Config, v any) { c.Policy.Rebalance.MaxMoves = v.(int) }},
		{"policy.forensics.before_evacuation", kBool, false, "keep a leave-running snapshot of each container before a spot evacuation", func(c *Config, v any) { c.Policy.Forensics.BeforeEvacuation = v.(bool) }},
		{"policy.forensics.before_evacuation_share", kFloat, 0.25, "share of the time to a notice's deadline the snapshots before its evacuation may take, all together (0 < share < 1)", func(c *Config, v any) { c.Policy.Forensics.BeforeEvacuationShare = v.(float64) }},
		{"policy.forensics.before_evacuation_parallel", kInt, 4, "snapshots taken at once before an evacuation", func(c *Config, v any) { c.Policy.Forensics.BeforeEvacuationParallel = v.(int) }},
		{"forensics.store_host", kString, "", "snapshot store host for `checkpoint --store` without --store-host (default: the container's host)", func(c *Config, v any) { c.Forensics.StoreHost = v.(string) }},
		{"forensics.image_registry", kString, "", "registry (host[:port][/path]) that `checkpoint --image` pushes images built on this host to; empty: they are only loaded into its Podman", func(c *Config, v any) { c.Forensics.ImageRegistry = v.(string) }},
		{"forensics.image_registry_tls_verify", kBool, true, "verify the image registry's TLS certificate; false also allows plain HTTP (a local test registry only)", func(c *Config, v any) { c.Forensics.ImageRegistryTLSVerify = v.(bool) }},
		{"forensics.retention.count", kInt, 10, "snapshots this host's store keeps at most", func(c *Config, v any) { c.Forensics.Retention.Count = v.(int) }},
		{"forensics.retention.max_age", kDuration, 7 * 24 * time.Hour, "age after which this host's store drops a snapshot", func(c *Config, v any) { c.Forensics.Retention.MaxAge = v.(time.Duration) }},
	}
}()

// FlagName is the agent flag for a key: "cluster.raft_bind" → "cluster-raft-bind".
func FlagName(k string) string { return strings.NewReplacer(".", "-", "_", "-").Replace(k) }

// EnvName is the environment variable for a key.
func EnvName(k string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(k))
}

// Keys lists every key, sorted.
func Keys() []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.name
	}
	sort.Strings(out)
	return out
}

// AddFlags registers one flag per key. Flags override env and file only
// when given.
func AddFlags(fs *pflag.FlagSet) {
	for _, k := range keys {
		name := FlagName(k.name)
		switch k.kind {
		case kInt:
			fs.Int(name, k.def.(int), k.usage)
		case kBool:
			fs.Bool(name, k.def.(bool), k.usage)
		case kList:
			fs.StringSlice(name, nil, k.usage)
		case kMap:
			fs.StringToString(name, nil, k.usage)
		default:
			fs.String(name, fmt.Sprint(k.def), k.usage)
		}
	}
}

// Load reads the file (optional), the environment and the flags (optional)
// and validates the result. Every error wraps ErrInvalid and names the key.
func Load(file string, fs *pflag.FlagSet) (Config, error) {
	v := viper.New()
	for _, k := range keys {
		v.SetDefault(k.name, k.def)
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if err := checkKeys(file, b); err != nil {
			return Config{}, err
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %v", ErrInvalid, file, err)
		}
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if fs != nil {
		for _, k := range keys {
			if f := fs.Lookup(FlagName(k.name)); f != nil {
				if err := v.BindPFlag(k.name, f); err != nil {
					return Config{}, err
				}
			}
		}
	}
	var c Config
	var errs []error
	for _, k := range keys {
		val, err := convert(k, v.Get(k.name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %v", ErrInvalid, k.name, err))
			continue
		}
		k.set(&c, val)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	c.fillDerived()
	return c, c.Validate()
}

// checkKeys rejects keys the file has that orchestrate does not know.
func checkKeys(file string, b []byte) error {
	var root map[string]any
	if err := yaml.Unmarshal(b, &root); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, file, err)
	}
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, k := range keys {
		known[k.name] = true
		parts := strings.Split(k.name, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	var errs []error
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for name, val := range m {
			full := strings.TrimPrefix(prefix+"."+name, ".")
			if known[full] {
				continue
			}
			if sub, ok := val.(map[string]any); ok && sections[full] {
				walk(full, sub)
				continue
			}
			errs = append(errs, fmt.Errorf("%w: %s: unknown key %q%s", ErrInvalid, file, full, suggest(full)))
		}
	}
	walk("", root)
	return errors.Join(errs...)
}

// suggest names the closest known key, for typos.
func suggest(k string) string {
	best, bestD := "", 4
	for _, kk := range keys {
		if d := distance(k, kk.name); d < bestD {
			best, bestD = kk.name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func convert(k key, raw any) (any, error) {
	switch k.kind {
	case kString:
		return fmt.Sprint(raw), nil
	case kAddr:
		s := fmt.Sprint(raw)
		if s == "" {
			return s, nil
		}
		return s, checkAddr(s)
	case kInt:
		switch n := raw.(type) {
		case int:
			return n, nil
		case int64:
			return int(n), nil
		case float64:
			if n == float64(int(n)) {
				return int(n), nil
			}
		case string:
			if i, err := strconv.Atoi(strings.TrimSpace(n)); err == nil {
				return i, nil
			}
		}
		return nil, fmt.Errorf("%q is not a whole number", fmt.Sprint(raw))
	case kBool:
		switch b := raw.(type) {
		case bool:
			return b, nil
		case string:
			if p, err := strconv.ParseBool(strings.TrimSpace(b)); err == nil {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%q is not a boolean (expected true or false)", fmt.Sprint(raw))
	case kFloat:
		switch f := raw.(type) {
		case float64:
			return f, nil
		case int:
			return float64(f), nil
		case string:
			if p, err := strconv.ParseFloat(strings.TrimSpace(f), 64); err == nil {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%q is not a number", fmt.Sprint(raw))
	case kDuration:
		switch d := raw.(type) {
		case time.Duration:
			return d, nil
		case string:
			if p, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && p > 0 {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%q is not a duration (expected a positive Go duration such as \"500ms\", \"2s\", \"1h\")", fmt.Sprint(raw))
	case kList:
		switch l := raw.(type) {
		case []string:
			return splitList(l), nil
		case []any:
			out := make([]string, 0, len(l))
			for _, x := range l {
				out = append(out, fmt.Sprint(x))
			}
			return splitList(out), nil
		case string:
			return splitList([]string{l}), nil
		}
		return nil, fmt.Errorf("%v is not a list", raw)
	case kMap:
		out := map[string]string{}
		switch m := raw.(type) {
		case map[string]string:
			for a, b := range m {
				out[a] = b
			}
		case map[string]any:
			for a, b := range m {
				out[a] = fmt.Sprint(b)
			}
		case string:
			for _, kv := range splitList([]string{m}) {
				a, b, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("%q is not key=value", kv)
				}
				out[strings.TrimSpace(a)] = strings.TrimSpace(b)
			}
		default:
			return nil, fmt.Errorf("%v is not a map", raw)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown kind")
}

// splitList splits comma-separated elements and drops empty ones.
func splitList(in []string) []string {
	out := []string{}
	for _, s := range in {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func checkAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not an address (expected host:port, e.g. 10.99.0.1:7946)", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q has a bad port (expected host:port with port 0-65535)", s)
	}
	if host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q has a bad host (expected an IP or name)", s)
	}
	return nil
}

// fillDerived sets the addresses that default to cluster.bind's host.
func (c *Config) fillDerived() {
	host, _, err := net.SplitHostPort(c.Cluster.Bind)
	if err != nil {
		return
	}
	if c.Cluster.RaftBind == "" {
		c.Cluster.RaftBind = net.JoinHostPort(host, "7947")
	}
	if c.API.Bind == "" {
		c.API.Bind = net.JoinHostPort(host, "7948")
	}
	if c.Transfer.Bind == "" {
		c.Transfer.Bind = net.JoinHostPort(host, "7922")
	}
}

// Validate checks rules across keys. Errors wrap ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	bad := func(k, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalid, k, fmt.Sprintf(format, args...)))
	}
	if c.Node.Name == "" {
		bad("node.name", "empty (set a name; the hostname is the default)")
	}
	if c.Node.DataDir == "" {
		bad("node.data_dir", "empty")
	}
	if f := c.Policy.Forensics.BeforeEvacuationShare; f <= 0 || f >= 1 {
		bad("policy.forensics.before_evacuation_share", "%g (must be between 0 and 1, exclusive)", f)
	}
	if c.Policy.Forensics.BeforeEvacuationParallel < 1 {
		bad("policy.forensics.before_evacuation_parallel", "%d (at least 1)", c.Policy.Forensics.BeforeEvacuationParallel)
	}
	if c.Forensics.Retention.Count < 1 {
		bad("forensics.retention.count", "%d (keep at least 1)", c.Forensics.Retention.Count)
	}
	if c.Forensics.Retention.MaxAge <= 0 {
		bad("forensics.retention.max_age", "%s (must be positive)", c.Forensics.Retention.MaxAge)
	}
	if r := c.Forensics.ImageRegistry; strings.Contains(r, "://") || strings.ContainsAny(r, " \t") {
		bad("forensics.image_registry", "%q (give host[:port][/path], without a scheme)", r)
	}
	if c.Cluster.SecretFile == "" {
		bad("cluster.secret_file", "not set: every agent needs the cluster secret (create one with `orchestrate keygen FILE`)")
	}
	if c.Cluster.BootstrapExpect < 1 {
		bad("cluster.bootstrap_expect", "%d (expected 1 or more)", c.Cluster.BootstrapExpect)
	}
	if c.Cluster.MaxVoters < 1 {
		bad("cluster.max_voters", "%d (expected 1 or more)", c.Cluster.MaxVoters)
	}
	if c.Cluster.SuspicionMult < 1 {
		bad("cluster.suspicion_mult", "%d (expected 1 or more)", c.Cluster.SuspicionMult)
	}
	if host, _, err := net.SplitHostPort(c.Cluster.RaftBind); err == nil {
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			bad("cluster.raft_bind", "%q: peers dial this address, so it needs a concrete IP (e.g. 10.99.0.1:7947)", c.Cluster.RaftBind)
		}
	}
	for _, j := range c.Cluster.Join {
		if err := checkAddr(j); err != nil {
			bad("cluster.join", "%v", err)
		}
	}
	switch c.Engine.Type {
	case "podman", "docker":
		if !strings.HasPrefix(c.Engine.Socket, "unix://") {
			bad("engine.socket", "%q (expected unix:///path/to/%s.sock)", c.Engine.Socket, c.Engine.Type)
		}
	case cluster.EngineNone: // a witness: gossip and raft, never containers
	default:
		if !testEngine(c.Engine.Type) {
			bad("engine.type", "%q (expected podman, docker or none)", c.Engine.Type)
		}
	}
	if err := c.ClusterConfig().Retention.Validate(); err != nil {
		bad("cluster.retention", "%v", err)
	}
	for _, p := range c.Restore.AllowedBindPaths {
		if !filepath.IsAbs(p) {
			bad("restore.allowed_bind_paths", "%q (expected an absolute path)", p)
		}
	}
	for _, p := range c.Restore.AllowedDevices {
		if !strings.HasPrefix(filepath.Clean(p), "/dev/") {
			bad("restore.allowed_devices", "%q (expected a device path such as /dev/fuse)", p)
		}
	}
	for _, cp := range c.Restore.AllowedCapabilities {
		if n := engine.NormalizeCap(cp); n != "ALL" && !capName.MatchString(n) {
			bad("restore.allowed_capabilities", "%q (expected a capability such as NET_ADMIN or CAP_NET_ADMIN, or ALL)", cp)
		}
	}
	if c.Transfer.MaxFileBytes < 0 {
		bad("transfer.max_file_bytes", "%d (expected 0 for no limit, or a size in bytes)", c.Transfer.MaxFileBytes)
	}
	if c.Transfer.MinFreeBytes < 0 {
		bad("transfer.min_free_bytes", "%d (expected a size in bytes)", c.Transfer.MinFreeBytes)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q (expected debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q (expected text or json)", c.Log.Format)
	}
	// The policy packages name their keys without the "policy." prefix.
	for _, err := range []error{c.SpotConfig().Validate(), c.RebootConfig().Validate(), c.RebalanceConfig().Validate()} {
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: policy.%v", ErrInvalid, err))
		}
	}
	return errors.Join(errs...)
}

// SpotConfig returns the spot-notice watcher's config. The caller adds the
// host name and logger.
func (c Config) SpotConfig() spot.Config {
	sc := spot.DefaultConfig()
	sc.Provider, sc.Endpoint, sc.PollInterval = c.Policy.Spot.Provider, c.Policy.Spot.Endpoint, c.Policy.Spot.PollInterval
	sc.Host = c.Node.Name
	return sc
}

// RebootConfig returns the reboot policy's config.
func (c Config) RebootConfig() policy.RebootConfig {
	rc := policy.DefaultRebootConfig()
	r := c.Policy.Reboot
	rc.Enabled, rc.SentinelFile, rc.Concurrency, rc.Window = r.Enabled, r.SentinelFile, r.Concurrency, r.Window
	rc.SentinelCommand, rc.Command = strings.Fields(r.SentinelCommand), strings.Fields(r.Command)
	rc.Mode, rc.Return, rc.Timeout = policy.RebootMode(strings.ToLower(strings.TrimSpace(r.Mode))), r.Return, r.Timeout
	return rc
}

// RebalanceConfig returns the rebalance policy's config.
func (c Config) RebalanceConfig() policy.RebalanceConfig {
	rc := policy.DefaultRebalanceConfig()
	rc.Schedule, rc.Threshold, rc.MaxMoves = c.Policy.Rebalance.Schedule, c.Policy.Rebalance.Threshold, c.Policy.Rebalance.MaxMoves
	return rc
}

var capName = regexp.MustCompile(`^CAP_[A-Z_]+$`)

// RestorePolicy returns this host's restore policy (the restore.* keys).
func (c Config) RestorePolicy() engine.RestorePolicy {
	return engine.RestorePolicy{AllowPrivileged: c.Restore.AllowPrivileged, AllowedBindPaths: c.Restore.AllowedBindPaths,
		AllowedDevices: c.Restore.AllowedDevices, AllowedCapabilities: c.Restore.AllowedCapabilities}
}

// Cluster returns the cluster package's config. The caller adds the
// secret, engine, logger and hooks.
func (c Config) ClusterConfig() cluster.Config {
	cc := cluster.DefaultConfig()
	cc.NodeName, cc.DataDir, cc.Labels = c.Node.Name, c.Node.DataDir, c.Node.Labels
	cc.BindAddr, cc.RaftBindAddr, cc.Join = c.Cluster.Bind, c.Cluster.RaftBind, c.Cluster.Join
	cc.BootstrapExpect, cc.MaxVoters, cc.DeadRemoveAfter = c.Cluster.BootstrapExpect, c.Cluster.MaxVoters, c.Cluster.DeadRemoveAfter
	cc.ProbeInterval, cc.ProbeTimeout, cc.SuspicionMult = c.Cluster.ProbeInterval, c.Cluster.ProbeTimeout, c.Cluster.SuspicionMult
	cc.RaftHeartbeatTimeout, cc.RaftElectionTimeout = c.Cluster.RaftHeartbeatTimeout, c.Cluster.RaftElectionTimeout
	cc.StatsInterval = c.Cluster.StatsInterval
	r := c.Cluster.Retention
	cc.Retention = cluster.Retention{Migrations: r.Migrations, MigrationsMaxAge: r.MigrationsMaxAge, Events: r.Events, EventsMaxAge: r.EventsMaxAge}
	cc.APIBindAddr, cc.APISocket, cc.TransferAddr = c.API.Bind, c.API.Socket, c.Transfer.Bind
	cc.EngineType = c.Engine.Type
	return cc
}
