" sc2.vim: complete the code at the cursor with sc2, local StarCoder2 completion. Vim 8.2 or later.
"
" Install: copy this file to ~/.vim/plugin/ (or `source` it from your vimrc).
" Use:
"   insert mode   CTRL-X CTRL-A      completes at the cursor
"   :Sc2Complete                     completes after the character under the cursor, as `a` would
"   nmap <Leader>sc <Plug>(sc2-complete)    (a normal-mode key of your choice; same as :Sc2Complete)
" The unsaved buffer goes to `sc2 complete -:LINE:COL --byte-col` on stdin; the completion is inserted as
" one change (`u` undoes it). If sc2 fails, its error line is shown and the buffer is left as it was.
" Settings:
"   g:sc2_command      the program (default 'sc2')
"   g:sc2_args         more arguments, a list, e.g. ['-m', '7b', '--max-tokens', '64']
"   g:sc2_no_mappings  set it to keep CTRL-X CTRL-A free
" The call is synchronous (CTRL-C interrupts it); Neovim users get an asynchronous hook in sc2.lua.

if exists('g:loaded_sc2')
  finish
endif
let g:loaded_sc2 = 1
let s:save_cpo = &cpo
set cpo&vim

" The text to insert at byte column `col` (1-based, the cursor before that byte) of line `lnum`. Throws
" 'sc2: ...' with the last line sc2 (or the shell) printed on stderr when it fails.
function! s:Run(lnum, col) abort
  let l:argv = [get(g:, 'sc2_command', 'sc2'), 'complete', printf('-:%d:%d', a:lnum, a:col), '--byte-col']
  if !empty(expand('%:p'))
    let l:argv += ['--path', expand('%:p')]
  endif
  let l:argv += get(g:, 'sc2_args', [])
  let l:errfile = tempname()
  let l:cmd = join(map(l:argv, 'shellescape(v:val)')) . ' 2>' . shellescape(l:errfile)
  let l:buffer = join(getline(1, '$'), "\n") . "\n"
  let l:saved = [&shell, &shellcmdflag, &shellredir, &shellquote, &shellxquote]
  try
    if has('unix')  " the command line above is POSIX sh, whatever the user's 'shell' (fish, ...)
      set shell=/bin/sh shellcmdflag=-c shellredir=>%s\ 2>&1 shellquote= shellxquote=
    endif
    let l:out = system(l:cmd, l:buffer)
    let l:status = v:shell_error
  finally
    let [&shell, &shellcmdflag, &shellredir, &shellquote, &shellxquote] = l:saved
  endtry
  let l:errors = filereadable(l:errfile) ? filter(readfile(l:errfile), 'v:val =~# "\\S"') : []
  call delete(l:errfile)
  if l:status != 0
    let l:last = empty(l:errors) ? printf('exit status %d', l:status) : l:errors[-1]
    throw l:last =~# '^sc2: ' ? l:last : 'sc2: ' . l:last
  endif
  return l:out
endfunction

" Put `text` (which may span lines) before byte column `col` of line `lnum`; return [line, col] of the
" position just after it.
function! s:Insert(lnum, col, text) abort
  let l:line = getline(a:lnum)
  let l:parts = split(a:text, "\n", 1)
  let l:parts[0] = strpart(l:line, 0, a:col - 1) . l:parts[0]
  let l:end = [a:lnum + len(l:parts) - 1, len(l:parts[-1]) + 1]
  let l:parts[-1] .= strpart(l:line, a:col - 1)
  call setline(a:lnum, l:parts[0])
  if len(l:parts) > 1
    call append(a:lnum, l:parts[1:])
  endif
  return l:end
endfunction

" Complete at the cursor: in insert mode ('i') where typing would go, in normal mode ('n') after the
" character under the cursor. Returns an Ex command for the mapping to :execute, so that an error shows
" as sc2's one line (an :echoerr inside a function would add the function's name and line number).
function! s:Complete(mode) abort
  let l:lnum = line('.')
  let l:col = col('.')
  if a:mode ==# 'n'
    let l:col += len(matchstr(getline('.'), '\%' . l:col . 'c.'))
  endif
  try
    let l:text = s:Run(l:lnum, l:col)
  catch /^sc2: /
    return 'echoerr ' . string(v:exception)
  endtry
  if empty(l:text)
    return ''
  endif
  let [l:endl, l:endc] = s:Insert(l:lnum, l:col, l:text)
  call cursor(l:endl, a:mode ==# 'i' ? l:endc : max([l:endc - 1, 1]))
  return ''
endfunction

inoremap <silent> <Plug>(sc2-complete) <Cmd>execute <SID>Complete('i')<CR>
nnoremap <silent> <Plug>(sc2-complete) <Cmd>execute <SID>Complete('n')<CR>
command! -bar Sc2Complete execute <SID>Complete('n')

if !get(g:, 'sc2_no_mappings', 0) && empty(maparg('<C-x><C-a>', 'i'))
  imap <C-x><C-a> <Plug>(sc2-complete)
endif

let &cpo = s:save_cpo
unlet s:save_cpo
