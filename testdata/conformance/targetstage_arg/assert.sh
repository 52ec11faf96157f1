set -e
test "$(cat /first)" = "unset:"
test "$(cat /second)" = "stage:Final"
test "$(cat /third)" = "undeclared:none"
