// Markdown to DOM nodes, safely. Model text only ever becomes Text nodes (`append(string)`,
// `textContent`); elements come from a fixed list of tag names, and a link's href is set only
// for an absolute http(s) URL. Nothing here parses HTML, so `<img src=x onerror=...>` in a reply
// is shown as the characters it is.
//
// What chat models write: fenced code blocks (with a `language-*` class), inline code, headings,
// bold, italic, strikethrough, links and bare URLs, ordered and unordered lists (nested by
// indentation), block quotes, tables, horizontal rules, and paragraphs whose line breaks are
// kept. Unfinished syntax while a reply streams in (an open fence, a lone `**`) renders as far as
// it goes: an open fence is a code block up to the end, a lone marker is plain text.

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const QUOTE = /^ {0,3}>[ \t]?(.*)$/;
const TABLE_DIVIDER = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

// One pass over inline text; at each position the first alternative that matches wins.
const INLINE = new RegExp(
  [
    String.raw`(?<escape>\\[\\` + "`" + String.raw`*_{}\[\]()#+\-.!~|<>])`,
    "(?<code>(?<ticks>`+)(?<codeText>[^`]|[^`][\\s\\S]*?[^`])\\k<ticks>(?!`))",
    String.raw`(?<link>\[(?<linkText>(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]\((?<href>[^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)(?:[ \t]+"[^"]*")?\))`,
    String.raw`(?<auto><(?<autoHref>https?:\/\/[^\s<>]+)>)`,
    String.raw`(?<url>\bhttps?:\/\/[^\s<>]*[^\s<>.,;:!?"'()\[\]*_~])`,
    String.raw`(?<strong>\*\*(?=\S)(?<strongText>[\s\S]*?\S)\*\*|(?<![\w])__(?=\S)(?<strongText2>[\s\S]*?\S)__(?![\w]))`,
    String.raw`(?<strike>~~(?=\S)(?<strikeText>[\s\S]*?\S)~~)`,
    String.raw`(?<em>\*(?=[^\s*])(?<emText>[\s\S]*?[^\s*])\*(?!\*)|(?<![\w])_(?=[^\s_])(?<emText2>[\s\S]*?[^\s_])_(?![\w]))`,
    String.raw`(?<br>\n)`,
  ].join("|"),
  "g",
);

/** The Markdown `text` as a DocumentFragment of safe nodes. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment);
  return fragment;
}

/** An absolute http(s) URL as a string, or null for anything else (javascript:, data:, ...). */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function startsBlock(line, next) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    LIST_ITEM.test(line) ||
    isTableStart(line, next)
  );
}

function isTableStart(line, next) {
  return line.includes("|") && next !== undefined && next.includes("-") && TABLE_DIVIDER.test(next);
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    const heading = HEADING.exec(line);
    if (fence) {
      i = codeBlock(lines, i, fence, parent);
    } else if (heading) {
      const node = el(`h${heading[1].length}`);
      renderInline(heading[2], node);
      parent.append(node);
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      i = blockQuote(lines, i, parent);
    } else if (LIST_ITEM.test(line)) {
      i = list(lines, i, parent);
    } else if (isTableStart(line, lines[i + 1])) {
      i = table(lines, i, parent);
    } else {
      i = paragraph(lines, i, parent);
    }
  }
}

function codeBlock(lines, start, match, parent) {
  const [, fence, info] = match;
  const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !closing.test(lines[i])) {
    body.push(lines[i]);
    i += 1;
  }
  const language = info.toLowerCase().replace(/[^a-z0-9_+#.-]/g, "").slice(0, 32);
  const box = el("div", "code");
  const head = el("div", "code-head");
  const label = el("span", "code-language");
  label.textContent = language || "text";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  head.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  if (language) code.classList.add(`language-${language}`);
  code.textContent = body.join("\n");
  pre.append(code);
  box.append(head, pre);
  parent.append(box);
  return i + 1; // past the closing fence, or the end
}

function paragraph(lines, start, parent) {
  const kept = [lines[start].trim()];
  let i = start + 1;
  while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) {
    kept.push(lines[i].trim());
    i += 1;
  }
  const node = el("p");
  renderInline(kept.join("\n"), node);
  parent.append(node);
  return i;
}

function blockQuote(lines, start, parent) {
  const inner = [];
  let i = start;
  while (i < lines.length) {
    const quoted = QUOTE.exec(lines[i]);
    if (quoted) inner.push(quoted[1]);
    else if (lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) inner.push(lines[i]);
    else break;
    i += 1;
  }
  const node = el("blockquote");
  renderBlocks(inner, node);
  parent.append(node);
  return i;
}

function list(lines, start, parent) {
  const first = LIST_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  const number = Number.parseInt(first[2], 10);
  if (ordered && number !== 1) node.start = number;
  const items = [];
  let loose = false;
  let i = start;
  while (i < lines.length) {
    const item = LIST_ITEM.exec(lines[i]);
    if (!item || item[1].length !== indent || /\d/.test(item[2]) !== ordered) break;
    const width = item[1].length + item[2].length + 1;
    const content = [item[3] ?? ""];
    i += 1;
    let next = null; // where the next item of this list starts, after blank lines
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j += 1;
        if (j < lines.length && indentOf(lines[j]) > indent) {
          content.push(...lines.slice(i, j).map(() => ""));
          loose = true;
          i = j;
          continue;
        }
        next = j;
        break;
      }
      const sub = LIST_ITEM.exec(line);
      if (sub && sub[1].length <= indent) break;
      if (indentOf(line) > indent) {
        content.push(line.slice(Math.min(indentOf(line), width)));
      } else if (startsBlock(line, lines[i + 1])) {
        break;
      } else {
        content.push(line); // a lazy continuation of the item's paragraph
      }
      i += 1;
    }
    items.push(content);
    if (next !== null) {
      const after = next < lines.length ? LIST_ITEM.exec(lines[next]) : null;
      if (!after || after[1].length !== indent || /\d/.test(after[2]) !== ordered) break;
      loose = true;
      i = next;
    }
  }
  for (const content of items) {
    const li = el("li");
    renderBlocks(content, li);
    if (!loose) {
      for (const child of [...li.children]) {
        if (child.tagName === "P") child.replaceWith(...child.childNodes);
      }
    }
    node.append(li);
  }
  parent.append(node);
  return i;
}

function cells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines, start, parent) {
  const header = cells(lines[start]);
  const aligns = cells(lines[start + 1]).map((cell) => {
    if (cell.startsWith(":") && cell.endsWith(":")) return "center";
    if (cell.endsWith(":")) return "right";
    return cell.startsWith(":") ? "left" : "";
  });
  const box = el("div", "table");
  const node = el("table");
  const head = el("thead");
  const headRow = el("tr");
  header.forEach((text, column) => headRow.append(tableCell("th", text, aligns[column])));
  head.append(headRow);
  const body = el("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
    const row = el("tr");
    const values = cells(lines[i]);
    header.forEach((_, column) => row.append(tableCell("td", values[column] ?? "", aligns[column])));
    body.append(row);
    i += 1;
  }
  node.append(head, body);
  box.append(node);
  parent.append(box);
  return i;
}

function tableCell(tag, text, align) {
  const cell = el(tag, align ? `align-${align}` : "");
  renderInline(text, cell);
  return cell;
}

function renderInline(text, parent, inLink = false) {
  let last = 0;
  // matchAll works on a copy of INLINE, so the recursion below does not disturb this loop.
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    last = match.index + match[0].length;
    const g = match.groups;
    if (g.escape) {
      parent.append(g.escape.slice(1));
    } else if (g.code) {
      const code = el("code");
      code.textContent = codeSpan(g.codeText);
      parent.append(code);
    } else if (g.link || g.auto || g.url) {
      const href = safeHref(g.href ?? g.autoHref ?? g.url);
      if (inLink || href === null) {
        parent.append(match[0]); // shown as written: no link to a javascript: or relative URL
        continue;
      }
      const link = el("a");
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      if (g.link) renderInline(g.linkText, link, true);
      else link.textContent = g.autoHref ?? g.url;
      parent.append(link);
    } else if (g.strong || g.strike || g.em) {
      const node = el(g.strong ? "strong" : g.strike ? "del" : "em");
      renderInline(g.strongText ?? g.strongText2 ?? g.strikeText ?? g.emText ?? g.emText2, node, inLink);
      parent.append(node);
    } else if (g.br) {
      parent.append(el("br"));
    }
  }
  if (last < text.length) parent.append(text.slice(last));
}

function codeSpan(text) {
  const flat = text.replace(/\n/g, " ");
  const padded = flat.length > 2 && flat.startsWith(" ") && flat.endsWith(" ") && flat.trim();
  return padded ? flat.slice(1, -1) : flat;
}
