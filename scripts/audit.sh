#!/usr/bin/env bash
# Checks the dependencies against the RustSec advisory database: `cargo deny check
# advisories`, failing on any advisory but the reviewed exceptions in deny.toml.
#
#   scripts/audit.sh               # fetch the database and check (CI runs this)
#   AUDIT_REQUIRED=1 scripts/audit.sh   # and fail if the database cannot be fetched
#
# The database is a git repository on GitHub. Where it cannot be fetched (the machines
# this was built on reach no GitHub), the script says so loudly, then checks the check
# itself on a database of its own making: one made-up vulnerability in a crate we use
# must fail it, and advisories with the IDs deny.toml accepts must not.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version 0.20.2 --quiet

if fetched=$(cargo deny fetch db 2>&1); then
  cargo deny --offline check advisories
  exit 0
fi
if [ "${AUDIT_REQUIRED:-0}" = 1 ]; then
  echo "$fetched" >&2
  echo "audit: the RustSec database cannot be fetched (AUDIT_REQUIRED=1)" >&2
  exit 1
fi
echo "audit: ADVISORIES NOT CHECKED: the RustSec database cannot be fetched here:" >&2
echo "$fetched" | grep -m1 -iE "fatal|could not|failed" >&2 || true

# The self-check: cargo-deny reads an offline database from its db-path, in the
# directory it names for the database URL (the failed fetch names it; 0.20's name here).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=$(grep -o 'advisory-db-[0-9a-f]\{16\}' <<<"$fetched" | head -1 || true)
db=$work/db/${name:-advisory-db-3157b0e258782691}
advisory() { # id package informational|"" patched
  mkdir -p "$db/crates/$2"
  {
    echo '```toml'
    echo '[advisory]'
    echo "id = \"$1\""
    echo "package = \"$2\""
    echo 'date = "2026-11-28"'
    echo 'url = "https://example.invalid/self-check"'
    [ -n "$3" ] && echo "informational = \"$3\""
    echo
    echo '[versions]'
    echo "patched = [$4]"
    echo '```'
    echo
    echo "# Made up by scripts/audit.sh to check the check"
    echo
    echo "Not a real advisory."
  } > "$db/crates/$2/$1.md"
}
commit_db() {
  git -C "$db" add -A
  git -C "$db" -c user.name=audit -c user.email=audit@invalid commit -q -m "$1"
}
# deny.toml's accepted IDs, each for the crate its reason names.
mkdir -p "$db"
git -C "$db" init -q -b main
advisory RUSTSEC-2025-0141 bincode unmaintained ""
advisory RUSTSEC-2024-0436 paste unmaintained ""
advisory RUSTSEC-2026-0249 smartstring unmaintained ""
accepted=$(grep -o 'RUSTSEC-[0-9]*-[0-9]*' deny.toml | sort | tr '\n' ' ')
planted=$(find "$db/crates" -name 'RUSTSEC-*.md' -exec basename {} .md \; | sort | tr '\n' ' ')
if [ "$accepted" != "$planted" ]; then
  echo "audit: self-check FAILED: deny.toml accepts $accepted but this script plants $planted" >&2
  exit 1
fi
commit_db "the accepted advisories"
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$work/db\"|" deny.toml > "$work/deny.toml"
if ! out=$(cargo deny --offline --config "$work/deny.toml" check advisories 2>&1); then
  echo "$out" >&2
  echo "audit: self-check FAILED: deny.toml's accepted advisories do not pass" >&2
  exit 1
fi
advisory RUSTSEC-2099-0001 anyhow "" '">= 99.0.0"'
commit_db "a vulnerability"
if out=$(cargo deny --offline --config "$work/deny.toml" check advisories 2>&1); then
  echo "$out" >&2
  echo "audit: self-check FAILED: a vulnerability in anyhow went unnoticed" >&2
  exit 1
fi
grep -q "RUSTSEC-2099-0001" <<<"$out" || { echo "$out" >&2; echo "audit: self-check FAILED: not for the planted advisory" >&2; exit 1; }
echo "audit: self-check passed (a planted vulnerability fails the check, the accepted advisories do not); the live database was not checked" >&2
