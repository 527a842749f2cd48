package cluster

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Bridges from memberlist's *log.Logger and raft's hclog.Logger into slog.

// memberlistLogger parses memberlist's "[LEVEL] memberlist: msg" lines.
func memberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(lineWriter{l.With("component", "memberlist")}, "", 0)
}

type lineWriter struct{ l *slog.Logger }

func (w lineWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if tag, m, ok := strings.Cut(rest, "]"); ok {
			msg = strings.TrimPrefix(strings.TrimSpace(m), "memberlist: ")
			switch tag {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
		}
	}
	w.l.Log(context.Background(), level, msg)
	return len(p), nil
}

// raftLogger is an hclog.Logger whose every line goes to slog, with the
// key/value pairs kept.
func raftLogger(l *slog.Logger) hclog.Logger {
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "raft", Level: hclog.Debug, Output: discard{}})
	il.RegisterSink(hclogSink{l.With("component", "raft")})
	return il
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

type hclogSink struct{ l *slog.Logger }

func (s hclogSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	lv := slog.LevelInfo
	switch {
	case level <= hclog.Debug:
		lv = slog.LevelDebug
	case level == hclog.Warn:
		lv = slog.LevelWarn
	case level >= hclog.Error:
		lv = slog.LevelError
	}
	s.l.Log(context.Background(), lv, msg, args...)
}
