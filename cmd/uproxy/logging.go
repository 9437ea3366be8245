package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/rs/zerolog"
	"k8s.io/klog/v2"
)

// newLogger builds the process logger: JSON lines or console output on w at
// level, with a timestamp. Components derive from it with
// log.With().Str("component", ...).
func newLogger(w io.Writer, format string, level zerolog.Level) zerolog.Logger {
	if format == logFormatConsole {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339Nano, NoColor: true}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// routeKlog sends everything client-go (and any other klog user) logs into
// log with component=klog. klog keeps doing its own -v filtering, so
// verbosity is also set as klog's -v: klog.V(n) messages with n <= verbosity
// reach log at debug level, unconditional ones (Info, Warning) at info and
// Error at error. It returns a function that restores klog's defaults.
//
// klog.SetLogger was chosen over klog.SetOutput: klog then passes the message
// and its key/value pairs, not a formatted text line with its own header, so
// the fields stay fields in our JSON.
func routeKlog(log zerolog.Logger, verbosity int) (restore func()) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", strconv.Itoa(verbosity)) // an int >= 0 always parses
	klog.SetLogger(logr.New(&klogSink{log: log.With().Str("component", "klog").Logger()}))
	return func() {
		klog.ClearLogger()
		_ = fs.Set("v", "0")
	}
}

// klogSink is a logr.LogSink writing to a zerolog.Logger. logr level 0 is
// info, every higher level is debug.
type klogSink struct {
	log  zerolog.Logger
	name string
}

var _ logr.LogSink = (*klogSink)(nil)

func (s *klogSink) Init(logr.RuntimeInfo) {}

func (s *klogSink) Enabled(level int) bool {
	return s.log.GetLevel() <= levelFor(level)
}

func (s *klogSink) Info(level int, msg string, kv ...any) {
	s.emit(s.log.WithLevel(levelFor(level)), msg, kv)
}

func (s *klogSink) Error(err error, msg string, kv ...any) {
	ev := s.log.Error()
	if err != nil {
		ev = ev.Err(err)
	}
	s.emit(ev, msg, kv)
}

func (s *klogSink) WithValues(kv ...any) logr.LogSink {
	return &klogSink{log: s.log.With().Fields(pairs(kv)).Logger(), name: s.name}
}

func (s *klogSink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	return &klogSink{log: s.log, name: name}
}

func (s *klogSink) emit(ev *zerolog.Event, msg string, kv []any) {
	if ev == nil { // level disabled
		return
	}
	if s.name != "" {
		ev = ev.Str("logger", s.name)
	}
	ev.Fields(pairs(kv)).Msg(msg)
}

func levelFor(logrLevel int) zerolog.Level {
	if logrLevel > 0 {
		return zerolog.DebugLevel
	}
	return zerolog.InfoLevel
}

// pairs makes logr key/value pairs safe for zerolog: string keys and an even
// count.
func pairs(kv []any) []any {
	out := make([]any, 0, len(kv)+1)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			k = fmt.Sprint(kv[i])
		}
		var v any = "(MISSING)"
		if i+1 < len(kv) {
			v = kv[i+1]
		}
		out = append(out, k, v)
	}
	return out
}
