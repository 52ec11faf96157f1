# No USER and USER root resolve the same way: root's /etc/group memberships apply.
test "$(cat /tmp/id-default)" = "uid=0(root) gid=0(root) groups=0(root),4(adm),10(wheel)"
test "$(cat /tmp/id-root)" = "uid=0(root) gid=0(root) groups=0(root),4(adm),10(wheel)"
