# `stat -c '%a %u:%g'` of each path, as current BuildKit makes it.
set -e
check() {
    got=$(stat -c '%a %u:%g' "$1")
    [ "$got" = "$2" ] || { echo "$1: got $got, want $2" >&2; exit 1; }
}
check /a '770 0:0'
check /a/b '770 0:0'
check /a/b/c '770 0:0'
check /a/b/c/file.txt '770 0:0'
check /a/b/f '777 0:0'
check /d '750 0:0'
check /d/e '750 0:0'
check /d/e/sub '750 0:0'
check /d/e/sub/g.txt '750 0:0'
# Parents get the permission bits only; the copied file keeps setgid.
check /special '751 0:0'
check /special/x '751 0:0'
check /special/x/f '2751 0:0'
check /owned '700 1000:1000'
check /owned/x '700 1000:1000'
check /owned/x/file.txt '700 1000:1000'
check /sym '755 0:0'
check /sym/dir '755 0:0'
check /sym/dir/file.txt '744 0:0'
test ! -e /empty
