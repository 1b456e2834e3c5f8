# Shared by the ensure-*.sh setup scripts (sourced, not run). Before sourcing, set SETUP_NAME (how
# messages begin) and SETUP_WITHOUT (what goes on without the tool). Under CI=true a missing tool
# is an error; elsewhere the tests that need it skip, saying why.
say() { echo "$SETUP_NAME: $*" >&2; }
give_up() {
  say "$*"
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  say "continuing without $SETUP_WITHOUT"
  exit 0
}
