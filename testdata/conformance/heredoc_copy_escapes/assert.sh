set -e
test "$(wc -c < /slash1)" -eq 1
test "$(cat /slash2)" = '\'
test "$(cat /dollar)" = "\$name world \"world\" 'world' a"
test "$(cat /raw)" = '\\ \$name'
