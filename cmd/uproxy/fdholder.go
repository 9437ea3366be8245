package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/uproxy/uproxy/fdhold"
)

// fdHolderCommand is the first argument that runs `uproxy fd-holder`: the
// process that keeps the proxy ports' sockets open while uproxy restarts
// (package fdhold; uproxy's --fd-holder-socket).
const fdHolderCommand = "fd-holder"

type fdHolderOptions struct {
	socket    string
	logFormat string
	logLevel  string
}

func fdHolderFlagSet(o *fdHolderOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("uproxy fd-holder", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.socket, "socket", "", "The unix socket to serve on: uproxy's --fd-holder-socket, in an emptyDir the two containers share. Required.")
	fs.StringVar(&o.logFormat, "log-format", logFormatJSON, "Log format: 'json' or 'console'.")
	fs.StringVar(&o.logLevel, "log-level", "info", "Log level: trace, debug, info, warn, error.")
	return fs
}

// runFDHolder is `uproxy fd-holder`. It holds the sockets uproxy hands it
// until SIGTERM or SIGINT (the pod is going away), then closes them and
// exits 0; 1 when it cannot serve, 2 for bad flags.
func runFDHolder(args []string, stdout, stderr io.Writer) int {
	var o fdHolderOptions
	fs := fdHolderFlagSet(&o)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprintf(stdout, "uproxy fd-holder: keep uproxy's listening sockets open while uproxy restarts.\n\n"+
			"Usage:\n  uproxy fd-holder --socket PATH\n\nFlags:\n%s", fs.FlagUsages())
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "uproxy fd-holder: %s\n", strings.ReplaceAll(err.Error(), "\n", `\n`))
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "uproxy fd-holder: unexpected argument %q\n", fs.Arg(0))
		return 2
	case o.socket == "":
		fmt.Fprintln(stderr, "uproxy fd-holder: --socket is required")
		return 2
	}
	if err := checkSocketPath(o.socket); err != nil {
		fmt.Fprintf(stderr, "uproxy fd-holder: invalid --socket %q: %v\n", o.socket, err)
		return 2
	}
	level, err := zerolog.ParseLevel(o.logLevel)
	if err != nil || o.logLevel == "" || (o.logFormat != logFormatJSON && o.logFormat != logFormatConsole) {
		fmt.Fprintf(stderr, "uproxy fd-holder: invalid --log-level %q or --log-format %q\n", o.logLevel, o.logFormat)
		return 2
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	log := newLogger(stderr, o.logFormat, level)
	raiseNofile(log) // one fd per proxy port
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := fdhold.Listen(o.socket)
	if err != nil {
		log.Error().Err(err).Str("socket", o.socket).Msg("cannot listen")
		return 1
	}
	log.Info().Str("socket", o.socket).Msg("fd holder serving")
	if err := fdhold.NewHolder(log).Serve(ctx, ln); err != nil {
		log.Error().Err(err).Msg("fd holder failed")
		return 1
	}
	log.Info().Msg("fd holder stopped")
	return 0
}
