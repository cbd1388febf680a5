#!/usr/bin/env bash
# Dependency policy (deny.toml): licences, duplicate versions, sources, and
# RustSec advisories. Installs the pinned cargo-deny when missing.
#
#   bash scripts/deny.sh                     # advisories from the snapshot
#   bash scripts/deny.sh --fetch             # advisories from the live database
#   bash scripts/deny.sh --refresh-snapshot  # fetch, then rewrite the snapshot
#
# Our machines and CI reach only package registries, not the advisory
# database's git repository, so the default run checks against a snapshot of
# it kept in scripts/advisory-db.tar.xz (CC0 / CC-BY-4.0, see its LICENSE.txt).
# A snapshot only knows advisories published before it was taken: refresh it
# wherever the live database is reachable.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

deny_version=0.20.2
# The snapshot's source commit and its date (the check reports its age).
snapshot="$root/scripts/advisory-db.tar.xz"
snapshot_commit=bf5c0d245a92671908518d7e765914d437954ed6
snapshot_date=2026-08-21T08:28:40+02:00
# Where cargo-deny looks for the default database inside `db-path` (a name it
# derives from the database URL; pinned together with deny_version).
db_dir=advisory-db-3157b0e258782691

mode=snapshot
case "${1:-}" in
"") ;;
--fetch) mode=fetch ;;
--refresh-snapshot) mode=refresh ;;
*)
    echo "usage: $0 [--fetch | --refresh-snapshot]" >&2
    exit 2
    ;;
esac

if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]]; then
    echo "deny.sh: installing cargo-deny $deny_version" >&2
    cargo install --locked "cargo-deny@$deny_version"
fi

# cargo-deny reads every crate's manifest: have them all locally first, so
# that the checks themselves can run offline.
cargo fetch --locked --quiet

if [[ "$mode" != snapshot ]]; then
    # cargo-deny's usual location, fetched (cloned or updated) by this run.
    export FLOWER_ADVISORY_DBS="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
    cargo deny --workspace check --hide-inclusion-graph --show-stats
    if [[ "$mode" == refresh ]]; then
        db="$FLOWER_ADVISORY_DBS/$db_dir"
        commit="$(git -C "$db" rev-parse HEAD)"
        date="$(git -C "$db" show -s --format=%cI HEAD)"
        git -C "$db" archive --format=tar --prefix=advisory-db/ HEAD \
            crates LICENSE.txt LICENSES README.md | xz -9e >"$snapshot"
        sed -i -e "s/^snapshot_commit=.*/snapshot_commit=$commit/" \
            -e "s/^snapshot_date=.*/snapshot_date=$date/" "$0"
        echo "deny.sh: snapshot now at $commit ($date)" >&2
    fi
    exit 0
fi

# Unpack the snapshot as the git checkout cargo-deny expects (it reads the
# database's age from the HEAD commit), once per snapshot.
export FLOWER_ADVISORY_DBS="$root/target/advisory-dbs"
db="$FLOWER_ADVISORY_DBS/$db_dir"
stamp="$(sha256sum "$snapshot" | cut -d' ' -f1)"
if [[ "$(cat "$db/.git/flower-snapshot" 2>/dev/null)" != "$stamp" ]]; then
    rm -rf "$db"
    mkdir -p "$db"
    tar -xJf "$snapshot" -C "$db" --strip-components=1
    git -C "$db" init --quiet
    git -C "$db" add --all
    GIT_AUTHOR_DATE="$snapshot_date" GIT_COMMITTER_DATE="$snapshot_date" \
        git -C "$db" -c user.name=deny.sh -c user.email=deny.sh@localhost \
        -c commit.gpgsign=false commit --quiet -m "advisory-db $snapshot_commit"
    echo "$stamp" >"$db/.git/flower-snapshot"
fi
age_days=$((($(date +%s) - $(date -d "$snapshot_date" +%s)) / 86400))
echo "deny.sh: advisories from the snapshot of $snapshot_date ($age_days days old)" >&2
if ((age_days > 180)); then
    echo "deny.sh: warning: the advisory snapshot is over 180 days old; refresh it with --refresh-snapshot where the database is reachable" >&2
fi
# --offline: no fetch of the database (nor of crates, already fetched above).
cargo deny --offline --workspace check --hide-inclusion-graph --show-stats
