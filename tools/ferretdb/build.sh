#!/usr/bin/env bash
# Builds pyron-ferretdb (FerretDB v1.24.2, embedded, SQLite backend) with one fix to
# FerretDB, or runs this folder's tests against the same fixed source.
#
#   tools/ferretdb/build.sh OUT    builds the binary to OUT
#   tools/ferretdb/build.sh test   runs `go test` (the fix, checked against SQLite's plan)
#
# The fix: FerretDB 1.x's SQLite backend makes each collection's unique `_id` index on
# the expression `_ferretdb_sjson->"_id"`, but finds a document by `_id` (a find, and the
# UPDATE or DELETE of every document it changes) with `_ferretdb_sjson->'$._id'`. The two
# give the same value, but SQLite uses an index on an expression only for that same
# expression, so every one of those statements scanned the whole table (about 0.4 s a
# statement with 100,000 documents). `->'_id'` is the same path, written the way SQLite
# matches to the index. FerretDB 1.x gets no more releases; the source comes from the Go
# module proxy and is changed in a copy under .tools/, never here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUT | test" >&2; exit 2; }
[ "$1" = test ] || out=$(realpath -m "$1")

module=github.com/FerretDB/FerretDB
work="$root/.tools/ferretdb-build"
# The module cache's files are read-only, and so is an earlier copy cut short.
[ ! -d "$work" ] || chmod -R u+w "$work"
rm -rf "$work"
mkdir -p "$work"
cp "$here"/*.go "$here"/go.mod "$here"/go.sum "$work"/
cd "$work"
go mod download "$module"
src=$(go list -m -f '{{.Dir}}' "$module")
cp -R "$src" ferretdb
chmod -R u+w ferretdb

file=ferretdb/internal/backends/sqlite/metadata/metadata.go
before="IDColumn = DefaultColumn + \"->'\$._id'\""
after="IDColumn = DefaultColumn + \"->'_id'\""
if [ "$(grep -cF "$before" "$file")" != 1 ]; then
  echo "FerretDB's $file has changed: the _id index fix in $0 no longer applies" >&2
  exit 1
fi
sed -i "s/$(printf '%s' "$before" | sed 's/[$.*/[\]^]/\\&/g')/$after/" "$file"
grep -qF "$after" "$file"
go mod edit -replace "$module=./ferretdb"

if [ "$1" = test ]; then
  go test -count=1 ./
else
  go build -trimpath -o "$out" .
fi
