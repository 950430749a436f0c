#!/usr/bin/env bash
# RustSec advisories without GitHub. CI reaches only the package registries, so the advisories
# that concern this project's dependencies are kept in .ci/advisory-db (a subset of
# github.com/rustsec/advisory-db: the crates/<name>/ folders of every crate in Cargo.lock, and
# the list of crates it was taken for), and checked with `cargo deny check advisories` offline.
#
#   .ci/advisories.sh refresh PATH   copy the subset from a clone of rustsec/advisory-db at PATH
#   .ci/advisories.sh check          fail if Cargo.lock has a crate the snapshot was not taken
#                                    for; run cargo deny on the snapshot (a fresher database
#                                    already fetched by cargo deny is used instead)
set -euo pipefail
cd "$(dirname "$0")/.."
snap=.ci/advisory-db
lock_crates() { sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u; }

case "${1:-}" in
refresh)
  src=${2:?usage: $0 refresh PATH-TO-advisory-db-clone}
  rm -rf "$snap" && mkdir -p "$snap/crates"
  lock_crates >"$snap/crates.txt"
  while read -r c; do
    if [ -d "$src/crates/$c" ]; then cp -r "$src/crates/$c" "$snap/crates/"; fi
  done <"$snap/crates.txt"
  {
    echo "url=https://github.com/rustsec/advisory-db"
    echo "commit=$(git -C "$src" rev-parse HEAD)"
    echo "date=$(git -C "$src" show -s --format=%cI HEAD)"
    echo "license=CC0-1.0"
  } >"$snap/SOURCE"
  echo "snapshot: $(ls "$snap/crates" | wc -l) crates with advisories, $(find "$snap/crates" -name '*.md' | wc -l) advisories"
  ;;
check)
  missing=$(comm -23 <(lock_crates) "$snap/crates.txt")
  if [ -n "$missing" ]; then
    echo "Cargo.lock has crates the advisory snapshot was not taken for:" $missing >&2
    echo "refresh it: $0 refresh PATH-TO-a-clone-of-rustsec/advisory-db" >&2
    exit 1
  fi
  # SOURCE is key=value lines; read it, never source it.
  field() { sed -n "s/^$1=//p" "$snap/SOURCE"; }
  commit=$(field commit)
  date=$(field date)
  age=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
  echo "advisory snapshot: rustsec/advisory-db $commit of $date ($age days old)"
  if [ "$age" -gt 90 ]; then
    echo "warning: the advisory snapshot is $age days old; refresh it: $0 refresh PATH" >&2
  fi
  # cargo deny looks for the database under $CARGO_HOME/advisory-dbs, in a folder named after the
  # URL. Build a git repository there from the snapshot unless a database is already there (one
  # cargo deny fetched itself is at least as fresh).
  db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
  if ! git -C "$db" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    rm -rf "$db" && mkdir -p "$db"
    cp -r "$snap/crates" "$db/"
    git -C "$db" init -q -b main
    git -C "$db" add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
      git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost commit -qm "rustsec/advisory-db $commit (subset)"
  fi
  cargo deny --offline check advisories
  ;;
*)
  echo "usage: $0 refresh PATH | check" >&2
  exit 2
  ;;
esac
