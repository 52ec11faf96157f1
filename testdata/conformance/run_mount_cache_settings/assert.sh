test "$(cat /first)" = "1001:1002:751"
test "$(cat /second)" = "0:0:755"
test ! -s /second-ls
test "$(cat /third-ls)" = from-first
