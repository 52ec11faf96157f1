# The mount targets were created only to mount on: no stub is left in the image.
! test -e /scratch && ! test -e /var
test "$(cat /listing)" = x && test "$(cat /from-tmpfs)" = t
