# setgroups sorts the list, so the primary gid shows in numeric order.
test "$(cat /tmp/id-user)" = "uid=1000(user) gid=1000(user) groups=50(staff),1000(user)"
test "$(cat /tmp/id-numeric)" = "uid=1000(user) gid=50(staff) groups=50(staff)"
test "$(cat /tmp/id-root)" = "uid=0(root) gid=0(root) groups=0(root)"
