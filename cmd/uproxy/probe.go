package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// probeCommand is the first argument that runs `uproxy probe` instead of the
// proxy.
const probeCommand = "probe"

// probeOptions are `uproxy probe`'s flags.
type probeOptions struct {
	socket  string
	path    string
	timeout time.Duration
}

func probeFlagSet(o *probeOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("uproxy probe", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.socket, "socket", "", "The unix socket uproxy serves its health endpoints on (its --health-socket). Required.")
	fs.StringVar(&o.path, "path", "/healthz", "The path to GET: /healthz (readiness) or /livez (liveness).")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Second, "How long the whole request may take. Keep it under the probe's timeoutSeconds.")
	return fs
}

func probeUsage(w io.Writer) {
	var o probeOptions
	fmt.Fprintf(w, "uproxy probe: GET a health endpoint of the uproxy serving on a unix socket (an exec probe).\n"+
		"Exit 0 on 200, 1 otherwise (the reason is printed), 2 for bad flags.\n\n"+
		"Usage:\n  uproxy probe --socket PATH [--path /healthz] [--timeout 3s]\n\nFlags:\n%s", probeFlagSet(&o).FlagUsages())
}

// parseProbeFlags parses and validates `uproxy probe`'s arguments.
func parseProbeFlags(args []string) (*probeOptions, error) {
	var o probeOptions
	fs := probeFlagSet(&o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, errHelp
		}
		return nil, errors.New(strings.ReplaceAll(err.Error(), "\n", `\n`))
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q (probe takes flags only)", fs.Arg(0))
	case o.socket == "":
		return nil, errors.New("--socket is required")
	case !strings.HasPrefix(o.path, "/"):
		return nil, fmt.Errorf("invalid --path %q: must start with /", o.path)
	case o.timeout <= 0:
		return nil, fmt.Errorf("invalid --timeout %s: must be greater than 0", o.timeout)
	}
	if err := checkSocketPath(o.socket); err != nil {
		return nil, fmt.Errorf("invalid --socket %q: %w", o.socket, err)
	}
	return &o, nil
}

// runProbe is `uproxy probe`: it GETs --path from the uproxy serving on
// --socket within --timeout and returns the exit code: 0 on 200 (the body
// goes to stdout), 1 otherwise with one line saying why on stderr (kubelet
// shows it in the pod's events), 2 for bad flags.
func runProbe(args []string, stdout, stderr io.Writer) int {
	o, err := parseProbeFlags(args)
	switch {
	case errors.Is(err, errHelp):
		probeUsage(stdout)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "uproxy probe: %v\n", err)
		return 2
	}
	body, err := probe(o)
	if err != nil {
		fmt.Fprintf(stderr, "uproxy probe: GET %s on %s: %v\n", o.path, o.socket, err)
		return 1
	}
	_, _ = stdout.Write(body)
	return 0
}

// probe GETs o.path over the unix socket and returns the body of a 200, or
// why it got none.
func probe(o *probeOptions) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", o.socket)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://uproxy"+o.path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop `Get "http://uproxy/healthz":`, the line says it already
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no answer within %s", o.timeout)
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, probeReason(body))
	}
	if readErr != nil {
		return nil, fmt.Errorf("%s, reading the body: %w", resp.Status, readErr)
	}
	return body, nil
}

// probeReason is the "reason" of a health body, or the body itself on one
// line.
func probeReason(body []byte) string {
	var r struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(body, &r) == nil && r.Reason != "" {
		return r.Reason
	}
	s := strings.Join(strings.Fields(string(bytes.TrimSpace(body))), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		return "empty body"
	}
	return s
}
