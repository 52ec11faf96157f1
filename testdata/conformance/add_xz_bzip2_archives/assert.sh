test "$(cat /xz/xzdir/sub/file)" = "from xz"
test "$(readlink /xz/xzdir/sub/link)" = file
test "$(cat /bz/bzdir/b.txt)" = "from bzip2"
test ! -e /xz/archive.tar.xz
