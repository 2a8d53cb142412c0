# Shared by the bench scripts (sourced): the admin API of the relay on $RELAY, with
# $ADMIN_TOKEN.
admin() { curl -sf "http://127.0.0.1:$RELAY/api/v1/admin/$1" -H "Authorization: Bearer $ADMIN_TOKEN" -d "$2"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
# group NAME MOCK_PORT CREDENTIAL...: a group with one account per credential against the
# mock on MOCK_PORT, priorities 1, 2, ... in order; prints a relay key of the group.
group() {
  local name=$1 port=$2; shift 2
  local gid; gid=$(admin groups "{\"name\":\"$name\"}" | json "['id']")
  local priority=1
  for credential in "$@"; do
    admin accounts "{\"name\":\"$name-$priority\",\"platform\":\"claude_console\",\"group_id\":$gid,\"base_url\":\"http://127.0.0.1:$port\",\"api_key\":\"$credential\",\"priority\":$priority}" >/dev/null
    priority=$((priority + 1))
  done
  admin api-keys "{\"name\":\"$name\",\"group_id\":$gid}" | json "['key']"
}
