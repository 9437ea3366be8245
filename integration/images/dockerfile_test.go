package images

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// runtimeStage is what the Dockerfile's last stage says about the image.
type runtimeStage struct {
	from       string
	packages   []string
	tools      []string
	copyDest   string
	user       string
	expose     []string
	entrypoint []string
}

// parseRuntimeStage reads the last FROM stage of a Dockerfile: its base,
// the apt-get install package list, the tool-check loop's list, the
// destination of the COPY --from=build, USER, EXPOSE and ENTRYPOINT.
func parseRuntimeStage(t *testing.T, text string) runtimeStage {
	t.Helper()
	// Join continuation lines, drop comments.
	var lines []string
	var cur strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if s, ok := strings.CutSuffix(strings.TrimRight(l, " \t"), `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, strings.TrimSpace(cur.String()))
		cur.Reset()
	}
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "FROM ") {
			start = i
		}
	}
	if start < 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	var st runtimeStage
	installRE := regexp.MustCompile(`apt-get install ([^&;]*)`)
	loopRE := regexp.MustCompile(`for t in ([^;]*);`)
	for _, l := range lines[start:] {
		instr, args, _ := strings.Cut(l, " ")
		switch instr {
		case "FROM":
			st.from = args
		case "RUN":
			if m := installRE.FindStringSubmatch(args); m != nil {
				for _, w := range strings.Fields(m[1]) {
					if !strings.HasPrefix(w, "-") {
						st.packages = append(st.packages, w)
					}
				}
			}
			if m := loopRE.FindStringSubmatch(args); m != nil {
				st.tools = strings.Fields(m[1])
			}
		case "COPY":
			f := strings.Fields(args)
			if slices.Contains(f, "--from=build") {
				st.copyDest = f[len(f)-1]
			}
		case "USER":
			st.user = args
		case "EXPOSE":
			for _, p := range strings.Fields(args) {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				st.expose = append(st.expose, p)
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(args), &st.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: not exec form: %v", args, err)
			}
		}
	}
	return st
}

// TestUproxyImageFollowsDockerfile keeps the assembled uproxy image in step
// with the Dockerfile's runtime stage: same Debian suite, packages, checked
// tools, binary path, user, ports and entrypoint.
func TestUproxyImageFollowsDockerfile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	st := parseRuntimeStage(t, string(raw))
	cfg := uproxyConfig()
	var exposed []string
	for p := range cfg.ExposedPorts {
		exposed = append(exposed, p)
	}
	sorted := func(s []string) []string { return slices.Sorted(slices.Values(s)) }
	cases := map[string]struct {
		dockerfile, builder any
	}{
		"base image":         {st.from, "debian:" + debianSuite + "-slim"},
		"apt packages":       {sorted(st.packages), sorted(uproxyPackages)},
		"checked tools":      {st.tools, uproxyTools},
		"binary path (COPY)": {st.copyDest, uproxyBinary},
		"USER":               {st.user, cfg.User},
		"EXPOSE":             {sorted(st.expose), sorted(exposed)},
		"ENTRYPOINT":         {st.entrypoint, cfg.Entrypoint},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			d, _ := json.Marshal(tc.dockerfile)
			b, _ := json.Marshal(tc.builder)
			if string(d) != string(b) || string(d) == "null" || string(d) == `""` {
				t.Errorf("Dockerfile says %s, the image builder uses %s: update integration/images/images.go", d, b)
			}
		})
	}
}

func TestParseRuntimeStage(t *testing.T) {
	st := parseRuntimeStage(t, `FROM golang AS build
RUN apt-get install -y nothing-here
FROM debian:trixie-slim
# a comment \
RUN apt-get update && \
    apt-get install -y --no-install-recommends a b && \
    for t in x y; do \
      command -v "$t"; \
    done
COPY --from=build /out/bin /bin/bin
USER 1:2
EXPOSE 80 53/udp
ENTRYPOINT ["/bin/bin", "--flag"]
`)
	want := runtimeStage{from: "debian:trixie-slim", packages: []string{"a", "b"}, tools: []string{"x", "y"},
		copyDest: "/bin/bin", user: "1:2", expose: []string{"80/tcp", "53/udp"}, entrypoint: []string{"/bin/bin", "--flag"}}
	got, _ := json.Marshal([]any{st.from, st.packages, st.tools, st.copyDest, st.user, st.expose, st.entrypoint})
	exp, _ := json.Marshal([]any{want.from, want.packages, want.tools, want.copyDest, want.user, want.expose, want.entrypoint})
	if string(got) != string(exp) {
		t.Fatalf("parsed %s, want %s", got, exp)
	}
}
