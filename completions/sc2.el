;;; sc2.el --- Complete the code at point with sc2 (local StarCoder2)  -*- lexical-binding: t; -*-

;; Install: put this file on your `load-path', then in your init file:
;;   (require 'sc2)
;;   (global-set-key (kbd "C-c TAB") #'sc2-complete)
;; M-x sc2-complete sends the buffer (or, with an active region, just the region) to
;; `sc2 complete -:LINE:COL' on stdin and inserts the completion at point.  Unsaved text is what gets
;; completed.  If sc2 fails, its error line is shown and the buffer is left as it was.  The call is
;; synchronous; C-g interrupts it.

;;; Code:

(require 'cl-lib)

(defgroup sc2 nil
  "Local code completion with the StarCoder2 models."
  :group 'tools)

(defcustom sc2-program "sc2"
  "The sc2 executable."
  :type 'string)

(defcustom sc2-arguments nil
  "More arguments for `sc2 complete'.
For example (\"-m\" \"7b\" \"--max-tokens\" \"64\")."
  :type '(repeat string))

(defun sc2--cursor (start)
  "1-based line and character column of point, counted from START.
Emacs columns (`current-column') are 0-based and count display width
\(a tab is several columns); sc2 wants 1-based characters, so count them
in the text itself."
  (let ((before (buffer-substring-no-properties start (point))))
    (list (1+ (cl-count ?\n before))
          (1+ (- (length before) (if (string-match "\n[^\n]*\\'" before) (1+ (match-beginning 0)) 0))))))

(defun sc2--run (start end line column)
  "Complete the text between START and END at LINE:COLUMN.
Return the completion, or signal a `user-error' with sc2's error line."
  (let ((out (generate-new-buffer " *sc2-out*"))
        (err (make-temp-file "sc2-err"))
        (coding-system-for-write 'utf-8-unix)
        (coding-system-for-read 'utf-8-unix))
    (unwind-protect
        (let ((status (apply #'call-process-region start end sc2-program nil (list out err) nil
                             "complete" (format "-:%d:%d" line column)
                             (append (when buffer-file-name (list "--path" buffer-file-name))
                                     sc2-arguments))))
          (unless (eql status 0)
            (user-error "%s" (sc2--error-line err status)))
          (with-current-buffer out (buffer-string)))
      (kill-buffer out)
      (delete-file err))))

(defun sc2--error-line (file status)
  "The last non-blank line sc2 wrote to FILE, or one naming its exit STATUS."
  (let ((lines (with-temp-buffer
                 (insert-file-contents file)
                 (split-string (buffer-string) "\n" t "[ \t]+"))))
    (if lines
        (let ((last (car (last lines))))
          (if (string-prefix-p "sc2: " last) last (concat "sc2: " last)))
      (format "sc2: %s" status))))

;;;###autoload
(defun sc2-complete ()
  "Insert sc2's completion of the code at point.
With an active region, only the region is sent (point must lie in it)."
  (interactive)
  (let* ((region (use-region-p))
         (start (if region (region-beginning) (point-min)))
         (end (if region (region-end) (point-max)))
         (_ (unless (<= start (point) end) (user-error "sc2: point must be inside the region")))
         (cursor (sc2--cursor start))
         (text (condition-case nil
                   (sc2--run start end (car cursor) (cadr cursor))
                 (file-missing (user-error "sc2: cannot run %s; set `sc2-program'" sc2-program)))))
    (when region (deactivate-mark))
    (insert text)))

(provide 'sc2)
;;; sc2.el ends here
