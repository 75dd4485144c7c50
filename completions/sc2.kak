# sc2.kak: complete the code at the cursor with sc2 (local StarCoder2) in Kakoune.
#
# Install: copy this file to ~/.config/kak/autoload/ (keep `source "%val{runtime}/autoload"` working
# there) or `source` it from kakrc, then bind a key, e.g.
#   map global user c ': sc2-complete<ret>' -docstring 'sc2: complete at the cursor'
#   map global insert <c-x> '<a-;>: sc2-complete<ret>'
# sc2-complete pipes the whole (unsaved) buffer to `sc2 complete -:LINE:COL --byte-col`, with the main
# cursor's line and byte column, and inserts the completion before the cursor's character, where `i` would
# type. If sc2 fails, its error line is shown and the buffer is left as it was. Kakoune waits for sc2
# (shell commands are synchronous).

declare-option -docstring 'sc2: the program' str sc2_command sc2
declare-option -docstring 'sc2: more arguments for sc2 complete, split on spaces (e.g. -m 7b)' str sc2_args ''
declare-option -hidden str sc2_cursor
declare-option -hidden str sc2_dir

define-command sc2-complete -docstring 'Insert sc2''s completion at the main cursor' %{
    set-option window sc2_cursor "%val{cursor_line}:%val{cursor_column}"
    set-option window sc2_dir %sh{ mktemp -d "${TMPDIR:-/tmp}/sc2-kak.XXXXXX" }
    # `%` selects the buffer, <a-|> pipes it to a command and keeps the buffer as it is.
    execute-keys -draft '%<a-|>"$kak_opt_sc2_command" complete "-:$kak_opt_sc2_cursor" --byte-col --path "$kak_buffile" $kak_opt_sc2_args >"$kak_opt_sc2_dir/out" 2>"$kak_opt_sc2_dir/err"; echo $? >"$kak_opt_sc2_dir/status"<ret>'
    evaluate-commands %sh{
        dir=$kak_opt_sc2_dir
        status=$(cat "$dir/status" 2>/dev/null || echo 1)
        if [ "$status" = 0 ]; then
            # `,` keeps the main selection, `;` reduces it to the cursor, `!` inserts a command's output
            # before it; in a draft context, so the user's selections follow the text.
            printf "execute-keys -draft ',;!cat %s/out<ret>'\n" "$dir"
            printf "nop %%sh{ rm -rf '%s' }\n" "$dir"
        else
            line=$(grep -v '^[[:space:]]*$' "$dir/err" | tail -n 1)
            rm -rf "$dir"
            case $line in sc2:*) ;; *) line="sc2: ${line:-exit status $status}" ;; esac
            printf "fail '%s'\n" "$(printf %s "$line" | sed "s/'/''/g")"
        fi
    }
}
