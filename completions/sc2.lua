-- sc2.lua: complete the code at the cursor with sc2 (local StarCoder2 completion) in Neovim 0.7 or later.
--
-- Install: copy this file to ~/.config/nvim/lua/sc2.lua, then in init.lua: require('sc2').setup{}
-- Everything is asynchronous: sc2 runs as a job, the unsaved buffer goes to `sc2 complete -:LINE:COL` on
-- stdin, and the completion streams in as ghost text (virtual text) while typing goes on. Typing, moving
-- the cursor or leaving the buffer cancels the request.
--   require('sc2').complete()  streams the completion as ghost text, then inserts it at the cursor
--   require('sc2').suggest()   streams it as ghost text and leaves it there for accept() or cancel()
--   require('sc2').accept()    inserts the ghost text (what has arrived so far, if sc2 is still writing)
--   require('sc2').cancel()    stops sc2 and removes the ghost text
-- In insert mode the cursor is where typing goes; in normal mode the completion goes after the character
-- under the cursor, as `a` would. Each finished request fires `User Sc2Done`, with require('sc2').last
-- holding { text = ..., error = ... }.

local M = {}

local defaults = {
  cmd = { 'sc2' }, -- the program and any leading arguments
  model = nil, -- passed as -m MODEL; nil: sc2's configured model
  args = {}, -- more arguments for `sc2 complete`, e.g. { '--max-tokens', '64' }
  keys = { -- insert-mode keys; false leaves a key unmapped
    complete = '<C-x><C-a>', -- complete(): insert the completion when it is ready
    suggest = '<M-\\>', -- suggest(): ghost text only
    accept = '<Tab>', -- accept() when ghost text is shown, else the key itself
    dismiss = '<C-]>', -- cancel() when ghost text is shown, else the key itself
  },
  auto = false, -- suggest() by itself after `delay` ms without typing in insert mode
  delay = 400,
  hl_group = 'Comment', -- how ghost text looks
}

M.config = vim.deepcopy(defaults)
M.last = nil

local ns = vim.api.nvim_create_namespace('sc2')
local request = nil -- the one request in flight or on show
local timer = nil -- auto mode's pause timer
local watch -- sets the autocommands that cancel requests (below)

local function notify(message)
  vim.notify(message, vim.log.levels.ERROR, { title = 'sc2' })
end

local function in_insert_mode()
  local mode = vim.api.nvim_get_mode().mode
  return mode:sub(1, 1) == 'i' or mode:sub(1, 1) == 'R'
end

-- Where the completion goes: (0-based row, 0-based byte column), and the cursor it was asked at.
local function target()
  local cursor = vim.api.nvim_win_get_cursor(0)
  cursor[1] = math.max(cursor[1], 1) -- line 0 while Neovim starts up
  local row, col = cursor[1] - 1, cursor[2]
  if not in_insert_mode() then
    local line = vim.api.nvim_buf_get_lines(0, row, row + 1, true)[1]
    col = col + #vim.fn.matchstr(line, '\\%' .. (col + 1) .. 'c.')
  end
  return row, col, cursor
end

local function argv(row, col, buf)
  local cfg = M.config
  local cmd = type(cfg.cmd) == 'string' and { cfg.cmd } or vim.deepcopy(cfg.cmd)
  local location = string.format('-:%d:%d', row + 1, col + 1)
  vim.list_extend(cmd, { 'complete', location, '--byte-col', '--format', 'jsonl' })
  local name = vim.api.nvim_buf_get_name(buf)
  if name ~= '' and vim.bo[buf].buftype == '' then
    vim.list_extend(cmd, { '--path', name })
  end
  if cfg.model then
    vim.list_extend(cmd, { '-m', cfg.model })
  end
  return vim.list_extend(cmd, cfg.args or {})
end

local function render(req)
  if not vim.api.nvim_buf_is_valid(req.buf) then
    return
  end
  local tab = string.rep(' ', vim.bo[req.buf].tabstop)
  local lines = vim.split(req.text:gsub('\t', tab), '\n', { plain = true })
  local line = vim.api.nvim_buf_get_lines(req.buf, req.row, req.row + 1, true)[1]
  local opts = { id = req.mark, virt_text = { { lines[1], M.config.hl_group } }, hl_mode = 'combine' }
  if vim.fn.has('nvim-0.10') == 1 then
    opts.virt_text_pos = 'inline'
  else -- no inline virtual text before 0.10: right at the cursor when it ends the line, else after the line
    opts.virt_text_pos = req.col >= #line and 'overlay' or 'eol'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i], M.config.hl_group } })
    end
  end
  req.mark = vim.api.nvim_buf_set_extmark(req.buf, ns, req.row, math.min(req.col, #line), opts)
end

local function clear(req)
  if req.mark and vim.api.nvim_buf_is_valid(req.buf) then
    vim.api.nvim_buf_del_extmark(req.buf, ns, req.mark)
  end
  req.mark = nil
end

-- True while the buffer and cursor are as they were when the request started.
local function still_valid(req)
  return vim.api.nvim_buf_is_valid(req.buf)
    and vim.api.nvim_get_current_buf() == req.buf
    and vim.api.nvim_buf_get_changedtick(req.buf) == req.tick
    and vim.deep_equal(vim.api.nvim_win_get_cursor(0), req.cursor)
end

local function put(req, text)
  local lines = vim.split(text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(req.buf, req.row, req.col, req.row, req.col, lines)
  local row = req.row + #lines - 1
  local col = (#lines == 1 and req.col or 0) + #lines[#lines]
  if not in_insert_mode() then -- on the last inserted character, as after typing it and <Esc>
    col = math.max(col - #vim.fn.matchstr(lines[#lines], '.$'), 0)
  end
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
end

local function done(req, result)
  M.last = result
  if vim.fn.exists('#User#Sc2Done') == 1 then
    vim.cmd('doautocmd <nomodeline> User Sc2Done')
  end
  if result.error then
    notify(result.error)
  end
  return req
end

local function finish(req)
  if request ~= req or not (req.exited and req.eof) then
    return
  end
  if req.status ~= 0 then
    request = nil
    clear(req)
    local message = req.errors[#req.errors] or ('exited with status ' .. req.status)
    return done(req, { error = message:match('^sc2: ') and message or ('sc2: ' .. message) })
  end
  req.finished = true
  if req.insert or req.text == '' then
    request = nil
    clear(req)
    if req.insert and req.text ~= '' and still_valid(req) then
      put(req, req.text)
    end
  end
  return done(req, { text = req.text })
end

local function on_event(req, line)
  local ok, event = pcall(vim.fn.json_decode, line)
  if not ok or type(event) ~= 'table' then
    return
  end
  if event.type == 'token' then
    req.text = req.text .. event.text
    render(req)
  elseif event.type == 'done' then
    req.text = event.text
  end
end

local function on_stdout(req, data)
  if request ~= req then
    return
  end
  req.partial = req.partial .. data[1]
  for i = 2, #data do -- every further item starts after a newline: the previous line is complete
    on_event(req, req.partial)
    req.partial = data[i]
  end
  if #data == 1 and data[1] == '' then -- end of output
    on_event(req, req.partial)
    req.eof = true
    finish(req)
  end
end

local function start(insert)
  M.cancel()
  watch()
  local buf = vim.api.nvim_get_current_buf()
  local row, col, cursor = target()
  local req = { buf = buf, row = row, col = col, cursor = cursor, insert = insert, text = '', partial = '' }
  req.tick = vim.api.nvim_buf_get_changedtick(buf)
  req.errors = {}
  local cmd = argv(row, col, buf)
  local ok, job = pcall(vim.fn.jobstart, cmd, {
    on_stdout = function(_, data)
      on_stdout(req, data)
    end,
    on_stderr = function(_, data)
      for _, line in ipairs(data) do
        if line:match('%S') then
          table.insert(req.errors, line)
        end
      end
    end,
    on_exit = function(_, status)
      req.exited, req.status = true, status
      finish(req)
    end,
  })
  if not ok or job <= 0 then
    local message = string.format("sc2: cannot run '%s': set cmd in require('sc2').setup{}", cmd[1])
    return done(req, { error = message })
  end
  req.job = job
  request = req
  local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  table.insert(lines, '') -- the final newline
  vim.fn.chansend(job, lines)
  vim.fn.chanclose(job, 'stdin')
  return req
end

function M.complete()
  return start(true)
end

function M.suggest()
  return start(false)
end

--- The ghost text on show, or nil.
function M.suggestion()
  return request and request.mark and request.text or nil
end

--- True while sc2 is still writing.
function M.busy()
  return request ~= nil and not request.finished
end

function M.cancel()
  local req = request
  request = nil
  if req then
    if req.job and not req.finished then
      vim.fn.jobstop(req.job)
    end
    clear(req)
  end
end

function M.accept()
  local req = request
  if not req or req.text == '' then
    return false
  end
  M.cancel()
  if not still_valid(req) then
    return false
  end
  put(req, req.text)
  return true
end

-- Typing, moving or leaving cancels; in auto mode a pause in typing asks for a suggestion.
local function on_change()
  if request and not still_valid(request) then
    M.cancel()
  end
  if not (M.config.auto and in_insert_mode()) then
    return
  end
  timer = timer or vim.loop.new_timer()
  local buf, tick = vim.api.nvim_get_current_buf(), vim.api.nvim_buf_get_changedtick(0)
  timer:stop()
  timer:start(M.config.delay, 0, vim.schedule_wrap(function()
    local same = vim.api.nvim_get_current_buf() == buf and vim.api.nvim_buf_get_changedtick(buf) == tick
    if same and in_insert_mode() and request == nil then
      M.suggest()
    end
  end))
end

local watching = false

watch = function()
  if watching then
    return
  end
  watching = true
  local group = vim.api.nvim_create_augroup('sc2', { clear = true })
  local events = { 'TextChanged', 'TextChangedI', 'TextChangedP', 'CursorMoved', 'CursorMovedI', 'BufLeave' }
  vim.api.nvim_create_autocmd(events, { group = group, callback = on_change })
  vim.api.nvim_create_autocmd('InsertLeave', { group = group, callback = M.cancel })
end

local function key_or(action, key)
  return function()
    if M.suggestion() then
      action()
    else
      vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(key, true, false, true), 'n', false)
    end
  end
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  local keys = M.config.keys
  if keys.complete then
    vim.keymap.set('i', keys.complete, M.complete, { desc = 'sc2: complete at the cursor' })
  end
  if keys.suggest then
    vim.keymap.set('i', keys.suggest, M.suggest, { desc = 'sc2: suggest as ghost text' })
  end
  if keys.accept then
    vim.keymap.set('i', keys.accept, key_or(M.accept, keys.accept), { desc = 'sc2: accept the ghost text' })
  end
  if keys.dismiss then
    vim.keymap.set('i', keys.dismiss, key_or(M.cancel, keys.dismiss), { desc = 'sc2: drop the ghost text' })
  end
  vim.api.nvim_create_user_command('Sc2Complete', M.complete, { desc = 'sc2: complete at the cursor' })
  vim.api.nvim_create_user_command('Sc2Suggest', M.suggest, { desc = 'sc2: suggest as ghost text' })
  watch()
end

package.loaded['sc2'] = package.loaded['sc2'] or M
return M
