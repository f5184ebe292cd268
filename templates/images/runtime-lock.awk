# The entries of a hashed lock (a `name==version` line with its `--hash` and `# via` lines) except the
# packages the exclude files name (one per line, `#` comments), ready for an install with hashes required.
# Usage: awk -f runtime-lock.awk EXCLUDES... requirements.lock   (the lock comes last)
function normalized(name) { name = tolower(name); gsub(/[-_.]+/, "-", name); return name }
FILENAME != ARGV[ARGC - 1] { sub(/#.*/, ""); if (NF) excluded[normalized($1)] = 1; next }
/^[^ #]/ { split($1, pin, "=="); skip = normalized(pin[1]) in excluded }
!skip
