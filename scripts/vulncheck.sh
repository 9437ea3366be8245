#!/usr/bin/env bash
# govulncheck against a pinned snapshot of the Go vulnerability database.
# vuln.go.dev is not reachable from CI, but the database's source,
# golang.org/x/vulndb, is a module on the Go module proxy: its data/osv
# folder is indexed into a local v1 database with vulndb's own indexdb tool,
# and govulncheck reads it with -db file://. Refresh the snapshot by moving
# VULNDB to a newer pseudo-version (go list -m -versions golang.org/x/vulndb
# lists none; take the newest from `go list -m golang.org/x/vulndb@master`).
set -euo pipefail
cd "$(dirname "$0")/.."
VULNDB=${VULNDB:-v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK=${GOVULNCHECK:-v1.9.0}
db="$PWD/bin/vulndb-$VULNDB"
if [ ! -f "$db/index/modules.json" ]; then
  src=$(GOFLAGS=-mod=mod go mod download -json "golang.org/x/vulndb@$VULNDB" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src/data/osv" ] || { echo "vulncheck: no data/osv in golang.org/x/vulndb@$VULNDB ($src)" >&2; exit 1; }
  rm -rf "$db.tmp"
  go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB" -vulns "$src/data/osv" -out "$db.tmp"
  mv "$db.tmp" "$db"
fi
echo "vulncheck: $(go version | cut -d' ' -f3), database golang.org/x/vulndb@$VULNDB"
go run "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK" -db "file://$db" ./...
