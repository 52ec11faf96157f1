# type=$T (cache from --build-arg T=cache) and type=$TMP (tmpfs from ENV) were expanded.
! test -e /scratch && ! test -e /var/cache/thing
test "$(cat /listing)" = x && test "$(cat /from-tmpfs)" = t
