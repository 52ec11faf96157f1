! test -e /mnt && ! test -e /ctx
test "$(cat /copied)" = bound && test "$(cat /copied2)" = bound
