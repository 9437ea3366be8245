#!/usr/bin/env bash
# Runs every fuzz target (func FuzzXxx(f *testing.F)) of the main module for
# FUZZTIME each (default 5s). CI runs it briefly through `make test`; run it
# longer by hand: FUZZTIME=2m make fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-5s}
status=0
while IFS=: read -r file _ line; do
  name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"$line")
  pkg=./$(dirname "$file")
  echo "fuzz: $pkg $name ($t)"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg" >/tmp/uproxy-fuzz.$$ 2>&1; then
    cat /tmp/uproxy-fuzz.$$; status=1
  fi
done < <(git ls-files '*_test.go' | grep -v '^integration/' | xargs grep -Hn '^func Fuzz[A-Za-z0-9_]*(f \*testing.F)')
rm -f /tmp/uproxy-fuzz.$$
exit $status
